"""Policies through whole runs: training in graph mode, the run folder, tfpeft.load and the CLI."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tfpeft
import tiny
from tfpeft.cli import main

PATTERN = "pattern:include=attention/self/(query|value)/kernel,exclude=layer_._0/"
# (model type, policy, pooling, frozen_dropout); the BERT run goes through the command line.
RUNS = {
    "bert": (PATTERN, "mean", False),
    "gpt2": ("bitfit", "last", True),
    "t5": ("layernorm", "mean", False),
}


def trainable_names(model, backbone):
    return {weight.name for weight in tfpeft.parameter_report(model, backbone).weights if weight.trainable}


@pytest.fixture(scope="module")
def run_dirs(tiny_family_dir, toy_csv, tmp_path_factory):
    """Train one tiny run per entry of RUNS for one epoch; return {model type: run folder}."""
    run_dirs = {}
    for model_type, (policy, pooling, frozen_dropout) in RUNS.items():
        output_dir = str(tmp_path_factory.mktemp("policy_runs") / model_type)
        settings = dict(
            model_name_or_path=tiny_family_dir(model_type), train_file=toy_csv, output_dir=output_dir,
            policy=policy, pooling=pooling, frozen_dropout=frozen_dropout, num_train_epochs=1,
            max_seq_length=16, learning_rate=1e-2, per_device_train_batch_size=16, verbose=0,
        )
        if model_type == "bert":
            flags = ["--model", settings["model_name_or_path"], "--train-file", toy_csv, "--output-dir", output_dir,
                     "--policy", policy, "--num-train-epochs", "1", "--max-seq-length", "16",
                     "--learning-rate", "1e-2", "--per-device-train-batch-size", "16", "--quiet"]
            assert main(["train", *flags]) == 0
        else:
            tfpeft.train(**settings)
        run_dirs[model_type] = output_dir
    return run_dirs


@pytest.mark.parametrize("model_type", sorted(RUNS))
def test_policy_survives_save_and_load(model_type, run_dirs, tiny_family_dir):
    policy, pooling, _ = RUNS[model_type]
    run_dir = run_dirs[model_type]
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert results["policy"] == policy

    # The policy applied to a fresh copy of the pretrained backbone selects the expected set.
    fresh = tfpeft.load_backbone(tiny_family_dir(model_type))
    fresh_model = tfpeft.build_classifier(fresh, 3, pooling=pooling)
    tfpeft.apply_policy(fresh, policy, pooling=pooling)
    expected = trainable_names(fresh_model, fresh)

    loaded = tfpeft.load(run_dir)
    assert loaded.policy == tfpeft.parse_policy(policy)
    assert trainable_names(loaded.model, loaded.backbone) == expected
    assert results["trainable_params"] == tfpeft.parameter_report(loaded.model, loaded.backbone).trainable_params

    # Graph-mode training left every frozen backbone variable as pretrained and moved the rest.
    pretrained = dict(fresh.named_variables())
    for name, variable in loaded.backbone.named_variables():
        same = np.array_equal(variable.numpy(), pretrained[name].numpy())
        if name in expected:
            assert not same, f"trainable {name} kept its pretrained value"
        else:
            assert same, f"frozen {name} changed in training"


def test_selected_set_by_name(run_dirs):
    loaded = tfpeft.load(run_dirs["bert"])
    backbone_names = trainable_names(loaded.model, loaded.backbone) - {"head/kernel", "head/bias"}
    assert backbone_names == {
        "encoder/layer_._1/attention/self/query/kernel",
        "encoder/layer_._1/attention/self/value/kernel",
    }


def test_frozen_dropout_survives_load(run_dirs):
    loaded = tfpeft.load(run_dirs["gpt2"])
    settings = json.load(open(os.path.join(run_dirs["gpt2"], "model", "classifier.json")))
    assert settings["frozen_dropout"] is True
    features = {"input_ids": tf.constant([[5, 6, 7, 8]]), "attention_mask": tf.constant([[1, 1, 1, 1]])}
    # bitfit leaves the embeddings frozen; with frozen_dropout their dropout still applies.
    first = loaded.backbone.main_layer(**features, output_hidden_states=True, training=True).hidden_states[0]
    second = loaded.backbone.main_layer(**features, output_hidden_states=True, training=True).hidden_states[0]
    assert not np.array_equal(first.numpy(), second.numpy())


@pytest.mark.parametrize("model_type", sorted(tiny.FAMILY_CONFIGS))
def test_inspect_lists_every_part(model_type, tiny_family_dir, capsys):
    folder = tiny_family_dir(model_type)
    assert main(["inspect", "--model", folder, "--policy", "last_n:1", "--num-labels", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    backbone = tfpeft.load_backbone(folder)
    assert [part["name"] for part in report["parts"]] == [part.name for part in backbone.parts()] + ["head"]
    assert report["trainable_params"] + sum(p["total"] - p["trainable"] for p in report["parts"]) == report["total_params"]


def test_inspect_shows_shared_rows(tiny_family_dir, capsys):
    assert main(["inspect", "--model", tiny_family_dir("t5"), "--policy", "last_n:1", "--num-labels", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:3] for line in lines[2:]}
    # The bias table trains only when every block does; the final norm trains with the last block.
    assert rows["relative_attention_bias"] == ["0", "16"]
    assert rows["block_0"] == ["0", "2,080"]
    assert rows["block_1"] == ["2,080", "2,080"]
    assert rows["final_norm"] == ["16", "16"]


def test_inspect_weights_lists_stable_names(tiny_family_dir, capsys):
    assert main(["inspect", "--model", tiny_family_dir("mpnet"), "--policy", "last_n:2", "--weights"]) == 0
    output = capsys.readouterr().out
    line = next(line for line in output.splitlines() if line.startswith("encoder/relative_attention_bias/embeddings"))
    assert line.split() == ["encoder/relative_attention_bias/embeddings", "relative_attention_bias", "8x2", "16", "trainable"]
    assert "embeddings/word_embeddings/weight" in output
