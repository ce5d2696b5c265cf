"""LoRA adapters: parsing, the wrapper on every family, merge, the report and adapter run folders."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfpeft
from tfpeft.backbones import ARCHITECTURES
from tfpeft.errors import ConfigError, RunFolderError
from tfpeft.lora import (
    LoraConfig,
    adapter_variables,
    adapters,
    block_dense_layers,
    merge_adapters,
    remove_adapters,
    unmerge_adapters,
)

LORA = "lora:r=4,alpha=8"
# A batch with an empty text and a text longer than MAX_LENGTH tokens.
TEXTS = ["", "goal match team " * 20, "chip phone software today", "vote party"]
MAX_LENGTH = 16


def encode(backbone):
    from tfpeft.data import encode_texts

    encoded = encode_texts(backbone.tokenizer, TEXTS, MAX_LENGTH)
    # The long text is cut at MAX_LENGTH; the empty one holds at most the special tokens.
    assert encoded.full_lengths[1] > MAX_LENGTH
    assert encoded.lengths[1] == MAX_LENGTH
    assert encoded.lengths[0] <= 2
    mask = np.arange(MAX_LENGTH)[None, :] < encoded.lengths[:, None]
    return {"input_ids": tf.constant(encoded.input_ids), "attention_mask": tf.constant(mask.astype(np.int32))}


def test_parse_lora_policy():
    policy = tfpeft.parse_policy("lora:r=8,alpha=16,target_modules=query|value")
    assert policy.kind == "lora"
    assert policy.lora == LoraConfig(r=8, alpha=16.0, target_modules="query|value")
    assert policy.lora.scaling == 2.0
    assert policy.name == "lora:r=8,alpha=16,target_modules=query|value"
    assert tfpeft.parse_policy(policy.name) == policy
    # Defaults: rank 8, alpha 2r, the family's query and value projections.
    assert tfpeft.parse_policy("lora").lora == LoraConfig(r=8, alpha=16.0)
    # Commas inside a regular expression stay part of it.
    assert tfpeft.parse_policy("lora:target_modules=q{1,2},r=2").lora.target_modules == "q{1,2}"
    combined = tfpeft.parse_policy("lora:r=2,combine=bitfit")
    assert combined.lora.combine == "bitfit"
    assert tfpeft.parse_policy(combined.name) == combined
    assert LoraConfig(target_modules=["query", "value"]).target_modules == "(?:query)|(?:value)"


@pytest.mark.parametrize(
    "text, message",
    [
        ("lora:r=0", "r=0"),
        ("lora:r=two", "r must be an integer of at least 1, got 'two'"),
        ("lora:r=2.5", "r must be an integer of at least 1, got '2.5'"),
        ("lora:r=8,", "ends with a comma. Remove it"),
        ("lora:alpha=x", "alpha must be a number, got 'x'"),
        ("LORA:r=8", "Unknown policy kind 'LORA'.*Did you mean 'lora'"),
        ("lora:alpha=-1", "alpha=-1.0"),
        ("lora:dropout=1", "dropout=1.0"),
        ("lora:rank=8", "got 'rank=8'"),
        ("lora:r=2,r=4", "r= is given twice"),
        ("lora:target_modules=(query", "not a valid regular expression"),
        ("lora:combine=full", "combine='full'"),
    ],
)
def test_bad_lora_policies_name_the_value(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        tfpeft.parse_policy(text)


@pytest.fixture(scope="module")
def bert(tiny_bert_dir):
    backbone = tfpeft.load_backbone(tiny_bert_dir)
    return backbone, tfpeft.build_classifier(backbone, 3)


def test_unmatched_targets_list_dense_layers(tiny_bert_dir):
    backbone = tfpeft.load_backbone(tiny_bert_dir)
    with pytest.raises(ConfigError) as error:
        tfpeft.apply_policy(backbone, "lora:target_modules=qkv")
    message = str(error.value)
    assert "'qkv' matches no dense layer" in message
    for name in ("attention/self/query", "attention/self/key", "attention/output/dense", "intermediate/dense"):
        assert f"encoder/layer_._0/{name}" in message
    assert "'all-linear'" in message


def test_comma_separated_targets_hint_pipe(tiny_bert_dir):
    backbone = tfpeft.load_backbone(tiny_bert_dir)
    with pytest.raises(ConfigError, match=r"Separate several names with \| \(query\|value\), not a comma"):
        tfpeft.apply_policy(backbone, tfpeft.Policy("lora", lora=LoraConfig(target_modules="query,value")))


def test_rank_above_layer_width_rejected(tiny_bert_dir):
    backbone = tfpeft.load_backbone(tiny_bert_dir)
    with pytest.raises(ConfigError, match=r"r=17 is larger than .*attention/self/query allows: its kernel is 16 x 16\. Use r in 1\.\.16"):
        tfpeft.apply_policy(backbone, "lora:r=17")


def test_all_linear_targets_every_block_dense_layer(tiny_bert_dir):
    backbone = tfpeft.load_backbone(tiny_bert_dir)
    model = tfpeft.build_classifier(backbone, 3)
    tfpeft.apply_policy(backbone, "lora:r=2,target_modules=all-linear")
    # Per block: query, key, value, attention output 16x16; intermediate 16x32; output 32x16.
    per_block = 4 * 2 * (16 + 16) + 2 * 2 * (16 + 32)
    report = tfpeft.parameter_report(model, backbone)
    assert [part.lora for part in report.parts] == [0, per_block, per_block, 0, 0]
    assert len(adapters(backbone)) == 12
    # The pooler's dense layer lies outside the blocks and gets none.
    assert not any(name.startswith("pooler") for name in adapters(backbone))


def test_combined_policy_trains_adapters_and_biases(tiny_bert_dir):
    backbone = tfpeft.load_backbone(tiny_bert_dir)
    model = tfpeft.build_classifier(backbone, 3)
    tfpeft.apply_policy(backbone, "lora:r=2,combine=bitfit")
    names = {w.name for w in tfpeft.parameter_report(model, backbone).weights if w.trainable}
    assert "encoder/layer_._0/attention/self/query/lora_a" in names
    assert "encoder/layer_._1/intermediate/dense/bias" in names
    assert "encoder/layer_._0/attention/self/query/kernel" not in names


def _family_case(model_type, folder):
    backbone = tfpeft.load_backbone(folder)
    pooling = backbone.spec.poolings[0]
    model = tfpeft.build_classifier(backbone, 3, pooling=pooling)
    inputs = encode(backbone)
    base_logits = model(inputs, training=False).numpy()
    tfpeft.apply_policy(backbone, LORA, pooling=pooling)
    return backbone, model, inputs, base_logits


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_lora_on_every_family(model_type, tiny_family_dir):
    backbone, model, inputs, base_logits = _family_case(model_type, tiny_family_dir(model_type))
    assert adapters(backbone), model_type

    # B starts at zero, so the logits equal the base model's.
    logits = model(inputs, training=False).numpy()
    assert np.abs(logits - base_logits).max() < 1e-6

    # Only the adapters and the head train.
    lora = adapter_variables(backbone)
    head = model.get_layer("head").weights
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in lora + head}

    # Each targeted layer adds r x (in + out) parameters, counted in its block's row.
    expected = 0
    for state in adapters(backbone).values():
        in_dim, out_dim = state.kernel.shape
        assert tuple(state.a.shape) == (in_dim, 4)
        assert tuple(state.b.shape) == (4, out_dim)
        assert not np.any(state.b.numpy())
        assert np.any(state.a.numpy())
        expected += 4 * (in_dim + out_dim)
    report = tfpeft.parameter_report(model, backbone)
    assert report.lora_params == expected
    assert report.trainable_params == expected + sum(int(np.prod(v.shape)) for v in head)
    block_rows = [part for part in report.parts if "block" in part.name]
    assert all(part.lora > 0 for part in block_rows)
    assert "lora" in report.format().splitlines()[0]

    # After (simulated) training, merged and unmerged models give the same logits.
    rng = np.random.default_rng(0)
    for state in adapters(backbone).values():
        state.b.assign(rng.normal(0, 0.5, state.b.shape).astype(np.float32))
    trained = model(inputs, training=False).numpy()
    assert np.abs(trained - base_logits).max() > 1e-3
    kernels = {name: state.kernel.numpy() for name, state in adapters(backbone).items()}
    assert merge_adapters(backbone) == len(kernels)
    assert np.abs(model(inputs, training=False).numpy() - trained).max() < 1e-5
    unmerge_adapters(backbone)
    assert np.abs(model(inputs, training=False).numpy() - trained).max() < 1e-5
    for name, state in adapters(backbone).items():
        np.testing.assert_allclose(state.kernel.numpy(), kernels[name], atol=1e-6)

    # Removed adapters leave the base variables only, with the update folded in.
    num_base = len(backbone.main_layer.weights) - len(lora)
    remove_adapters(backbone)
    assert len(backbone.main_layer.weights) == num_base
    assert not any("lora" in name for name, _ in backbone.named_variables())
    assert np.abs(model(inputs, training=False).numpy() - trained).max() < 1e-5


def test_gpt2_targets_the_fused_conv1d(tiny_family_dir):
    backbone = tfpeft.load_backbone(tiny_family_dir("gpt2"))
    tfpeft.build_classifier(backbone, 3, pooling="last")
    tfpeft.apply_policy(backbone, "lora:r=2", pooling="last")
    assert sorted(adapters(backbone)) == ["h_._0/attn/c_attn", "h_._1/attn/c_attn"]
    assert all(type(layer).__name__ == "TFConv1D" for _, layer in block_dense_layers(backbone))


def test_dropout_only_while_training(tiny_bert_dir):
    backbone = tfpeft.load_backbone(tiny_bert_dir)
    model = tfpeft.build_classifier(backbone, 3, dropout=0.0)
    tfpeft.apply_policy(backbone, "lora:r=2,dropout=0.5")
    state = next(iter(adapters(backbone).values()))
    layer = dict(backbone.named_layers())[state.name]
    state.b.assign(tf.ones_like(state.b))
    x = tf.ones((1, 3, 16))
    inference = [layer(x, training=False).numpy() for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    assert np.abs(layer(x, training=True).numpy() - inference[0]).max() > 1e-4


# Adapter run folders.


@pytest.fixture(scope="module")
def lora_run(tiny_bert_dir, toy_csv, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("lora_run") / "run")
    return tfpeft.train(
        model_name_or_path=tiny_bert_dir, train_file=toy_csv, output_dir=output_dir, policy=LORA,
        num_train_epochs=2, max_seq_length=MAX_LENGTH, learning_rate=2e-2,
        per_device_train_batch_size=16, verbose=0, seed=3,
    )


def test_adapter_run_folder_holds_adapter_only(lora_run, tiny_bert_dir):
    model_dir = os.path.join(lora_run.output_dir, "model")
    files = sorted(os.listdir(model_dir))
    assert files == ["adapter_config.json", "adapter_weights.npz", "classifier.json", "config.json"]
    config = json.load(open(os.path.join(model_dir, "adapter_config.json")))
    assert config["base_model"] == os.path.abspath(tiny_bert_dir)
    assert (config["r"], config["alpha"], config["target_modules"]) == (4, 8.0, "query|value")
    assert config["label_map"] == ["politics", "sport", "tech"]
    assert config["base_config"]["model_type"] == "bert"
    assert len(config["base_config_sha256"]) == 64
    stored = np.load(os.path.join(model_dir, "adapter_weights.npz"))
    assert sorted(stored.files) == config["weights"]
    expected = sorted(
        [f"encoder/layer_._{i}/attention/self/{m}/lora_{x}" for i in (0, 1) for m in ("query", "value") for x in "ab"]
        + ["head/bias", "head/kernel"]
    )
    assert sorted(stored.files) == expected
    results = json.load(open(os.path.join(lora_run.output_dir, "results.json")))
    assert results["lora_params"] == 2 * 2 * 4 * (16 + 16)
    # The adapters trained away from zero.
    assert np.abs(stored["encoder/layer_._1/attention/self/value/lora_b"]).max() > 0


def test_adapter_run_loads_on_fresh_base(lora_run):
    loaded = tfpeft.load(lora_run.output_dir)
    texts = TEXTS + ["goal coach league", "robot code data"]
    trained = lora_run.classifier.predict_logits(texts)
    np.testing.assert_allclose(loaded.predict_logits(texts), trained, atol=1e-5)
    assert loaded.policy.name == LORA

    # Merged and unmerged give the same logits after training, on the empty and long texts.
    merge_adapters(loaded.backbone, loaded.model)
    np.testing.assert_allclose(loaded.predict_logits(texts), trained, atol=1e-5)
    unmerge_adapters(loaded.backbone, loaded.model)
    np.testing.assert_allclose(loaded.predict_logits(texts), trained, atol=1e-5)


def test_adapter_run_predicts_the_same_in_new_process(lora_run):
    texts = ["goal match team", "chip phone software", "vote party law", ""]
    expected = lora_run.classifier.predict(texts)
    code = (
        "import json, tfpeft; "
        f"print(json.dumps(tfpeft.load({lora_run.output_dir!r}).predict({texts!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


def test_exported_lora_run_is_the_merged_base_model(lora_run, tmp_path):
    from tfpeft.export import TEXT_SIGNATURE

    model_dir = os.path.join(lora_run.output_dir, "model")
    before = {name: open(os.path.join(model_dir, name), "rb").read() for name in os.listdir(model_dir)}
    exported = tfpeft.export(lora_run.output_dir, str(tmp_path / "models" / "lora"), verbose=0)

    # The SavedModel contains the base architecture: the same variables as an unadapted tiny BERT
    # with the same head, and no adapter matrix.
    saved = [name for name, _ in tf.train.list_variables(os.path.join(exported.path, "variables", "variables"))]
    assert not [name for name in saved if "lora" in name]
    plain = tfpeft.load(lora_run.output_dir)
    remove_adapters(plain.backbone, plain.model)
    served = tf.saved_model.load(exported.path)
    assert len(served.signatures[TEXT_SIGNATURE].variables) == len(plain.model.variables)

    # Its probabilities are the trained LoRA model's, unmerged, on the empty and the long text.
    outputs = served.signatures[TEXT_SIGNATURE](text=tf.constant(TEXTS))
    expected = lora_run.classifier.predict_proba(TEXTS)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-4, rtol=0)
    # Export merged a loaded copy: the run folder is byte for byte what training wrote.
    after = {name: open(os.path.join(model_dir, name), "rb").read() for name in os.listdir(model_dir)}
    assert after == before


def test_adapter_on_other_architecture_fails(lora_run, tiny_family_dir):
    with pytest.raises(RunFolderError, match=r"bert backbone with model_type='bert'.*has model_type='gpt2'"):
        tfpeft.load(lora_run.output_dir, base_model=tiny_family_dir("gpt2"))


def test_adapter_on_other_size_fails(lora_run, tmp_path):
    import tiny

    other = tiny.save_tiny_bert(str(tmp_path / "wide"), hidden_size=24, num_attention_heads=2)
    with pytest.raises(RunFolderError, match="hidden_size=16.*has hidden_size=24"):
        tfpeft.load(lora_run.output_dir, base_model=other)


def test_adapter_of_other_rank_fails(lora_run, tiny_bert_dir):
    from tfpeft.lora import load_adapter

    backbone = tfpeft.load_backbone(tiny_bert_dir)
    model = tfpeft.build_classifier(backbone, 3)
    tfpeft.apply_policy(backbone, "lora:r=2,alpha=8")
    with pytest.raises(RunFolderError, match="rank r=4, but the backbone's adapters have r=2"):
        load_adapter(os.path.join(lora_run.output_dir, "model"), model, backbone)


def test_lora_r_search(tiny_bert_dir, toy_csv, tmp_path):
    from tfpeft.tuning import TuningOptions, _trial_config

    base = tfpeft.TrainingConfig(policy="lora:r=8,alpha=16,target_modules=query")
    assert _trial_config(base, {"lora_r": 2}).policy == "lora:r=2,alpha=16,target_modules=query"
    assert _trial_config(tfpeft.TrainingConfig(policy="lora"), {"lora_r": 4}).policy == "lora:r=4,alpha=8"

    output_dir = str(tmp_path / "search")
    result = tfpeft.tune(
        output_dir=output_dir, space=["lora_r=choice:2,4"],
        options=TuningOptions(tuner="grid", max_trials=3),
        model_name_or_path=tiny_bert_dir, train_file=toy_csv, num_train_epochs=1, max_seq_length=16,
        per_device_train_batch_size=16, verbose=0, policy="lora:alpha=8",
    )
    trials_dir = os.path.join(output_dir, "tuning", "trials")
    summaries = [json.load(open(os.path.join(trials_dir, name, "summary.json"))) for name in sorted(os.listdir(trials_dir))]
    assert sorted(s["hyperparameters"]["lora_r"] for s in summaries) == [2, 4]
    assert all(s["status"] == "COMPLETED" for s in summaries)
    # Every trial starts from the pretrained backbone; the adapters start anew.
    assert len({s["backbone_start_sha256"] for s in summaries}) == 1
    assert result.best_config.policy in ("lora:r=2,alpha=8", "lora:r=4,alpha=8")


@pytest.mark.minilm
def test_minilm_lora_counts_and_adapter_size(toy_csv, tmp_path):
    output_dir = str(tmp_path / "minilm_lora")
    result = tfpeft.train(
        model_name_or_path="minilm", train_file=toy_csv, output_dir=output_dir,
        policy="lora:r=8,alpha=16,target_modules=query|value", num_train_epochs=1, max_seq_length=32,
        per_device_train_batch_size=16, verbose=0,
    )
    lora = 6 * 2 * (384 * 8 + 8 * 384)
    assert lora == 73_728
    head = 384 * 3 + 3
    assert result.results["lora_params"] == lora
    assert result.results["trainable_params"] == lora + head
    blocks = [part for part in result.results["parts"] if part["name"].startswith("block_")]
    assert [part["lora"] for part in blocks] == [2 * (384 * 8 + 8 * 384)] * 6
    adapter_file = os.path.join(output_dir, "model", "adapter_weights.npz")
    assert os.path.getsize(adapter_file) < 1_000_000
    assert not any(name.startswith("weights") for name in os.listdir(os.path.join(output_dir, "model")))
    loaded = tfpeft.load(output_dir)
    texts = ["goal match team", "chip phone software", "", "vote party " * 40]
    assert loaded.predict(texts) == result.classifier.predict(texts)
