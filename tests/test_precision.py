"""Mixed precision: 16-bit backbone compute, float32 head and loss, the global policy restored."""

import numpy as np
import tf_keras

import tfpeft
from tfpeft.precision import mixed_policy_name, precision_policy


def test_mixed_precision_run(tiny_bert_dir, toy_csv, tmp_path):
    assert tf_keras.mixed_precision.global_policy().name == "float32"
    result = tfpeft.train(
        model_name_or_path=tiny_bert_dir, train_file=toy_csv, output_dir=str(tmp_path / "run"),
        num_train_epochs=1, policy="last_n:1", max_seq_length=32, per_device_train_batch_size=8,
        mixed_precision=True, verbose=0, save_strategy="no",
    )
    # Set back after the run, so later models in this process are float32 again.
    assert tf_keras.mixed_precision.global_policy().name == "float32"

    compute = mixed_policy_name().split("_")[1]
    model = result.classifier.model
    backbone = result.classifier.backbone
    block = backbone.blocks[-1]
    assert block.compute_dtype == compute and block.variable_dtype == "float32"
    assert backbone.embeddings.compute_dtype == compute
    dense_layers = [layer for layer in block._flatten_layers() if isinstance(layer, tf_keras.layers.Dense)]
    assert dense_layers and all(layer.compute_dtype == compute for layer in dense_layers)
    head = model.get_layer("head")
    assert head.compute_dtype == "float32"
    assert model.outputs[0].dtype == "float32"

    history = result.results["history"]
    assert np.isfinite(history["loss"][0])
    assert np.isfinite(result.results["test"]["loss"])


def test_policy_is_restored_after_an_error():
    try:
        with precision_policy(True) as name:
            assert tf_keras.mixed_precision.global_policy().name == name
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert tf_keras.mixed_precision.global_policy().name == "float32"
