import os
import subprocess
import sys

import tf_keras

import tfpeft


def run_python(code):
    # A fresh process without the TF_USE_LEGACY_KERAS=1 that importing tfpeft set here.
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_import_sets_legacy_keras():
    import tensorflow as tf

    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert tf.keras.Model is tf_keras.Model


def test_import_after_keras3_bound_fails():
    result = run_python("import tensorflow as tf; tf.keras.Model; import tfpeft")
    assert result.returncode != 0
    assert "KerasVersionError" in result.stderr
    assert "tf.keras is already bound to Keras 3" in result.stderr
    assert "TF_USE_LEGACY_KERAS=1" in result.stderr


def test_import_after_tensorflow_untouched_keras_works():
    result = run_python(
        "import tensorflow as tf; import tfpeft, tf_keras; print(tf.keras.Model is tf_keras.Model)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("True")


def test_classifier_layers_are_tf_keras(tiny_bert_dir):
    import keras

    backbone = tfpeft.load_backbone(tiny_bert_dir)
    model = tfpeft.build_classifier(backbone, 3)
    layers = list(model._flatten_layers(include_self=True))
    assert len(layers) > 10  # the backbone's nested layers are included
    for layer in layers:
        assert isinstance(layer, tf_keras.layers.Layer), type(layer)
        assert not isinstance(layer, keras.layers.Layer), type(layer)
        modules = [cls.__module__ for cls in type(layer).__mro__]
        assert not any(module.split(".")[0] == "keras" for module in modules), modules
