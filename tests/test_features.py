"""The feature cache: same weights as training the full model, never a stale cache, LRU eviction."""

import json
import logging
import os

import numpy as np
import pytest
import tf_keras

import tfpeft
import tiny
from tfpeft.config import TrainingConfig
from tfpeft.features import (
    Cut,
    FeatureSource,
    FeatureStore,
    build_top_model,
    compute_features,
    find_cut,
    prepare_feature_cache,
)
from tfpeft.policies import apply_policy, parse_policy
from tfpeft.training import prepare_data


def _train(folder, csv, output_dir, policy, feature_cache):
    return tfpeft.train(
        model_name_or_path=folder, train_file=csv, output_dir=output_dir, policy=policy,
        feature_cache=feature_cache, num_train_epochs=2, max_seq_length=32,
        per_device_train_batch_size=8, classifier_dropout=0.0, learning_rate=1e-2, seed=3,
        save_strategy="no", verbose=0,
    )


@pytest.mark.parametrize("policy", ["head", "last_n:1", "last_n:2"])
def test_cache_matches_naive_weights(policy, tiny_bert_no_dropout_dir, toy_csv, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="tfpeft.features"):
        cached = _train(tiny_bert_no_dropout_dir, toy_csv, str(tmp_path / "cached"), policy, True)
    assert any("Feature cache: computed" in record.getMessage() for record in caplog.records)
    naive = _train(tiny_bert_no_dropout_dir, toy_csv, str(tmp_path / "naive"), policy, False)

    cached_weights = cached.classifier.model.get_weights()
    naive_weights = naive.classifier.model.get_weights()
    assert len(cached_weights) == len(naive_weights)
    for ours, theirs in zip(cached_weights, naive_weights):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    # Training moved the head, so the comparison is not between two untrained models.
    start = tfpeft.build_classifier(tfpeft.load_backbone(tiny_bert_no_dropout_dir), 3)
    assert not np.allclose(cached.classifier.model.get_layer("head").get_weights()[1], 0)
    assert len(start.get_weights()) == len(cached_weights)
    assert cached.results["history"]["loss"] == pytest.approx(naive.results["history"]["loss"], abs=1e-5)
    for key in ("loss", "accuracy", "macro_f1"):
        assert cached.results["test"][key] == pytest.approx(naive.results["test"][key], abs=1e-5)


@pytest.mark.parametrize("model_type, policy", [("t5", "last_n:2"), ("gpt2", "last_n:1"), ("deberta-v2", "last_n:1")])
def test_cache_matches_naive_weights_on_other_families(model_type, policy, toy_csv, tmp_path):
    """Families with a final layer norm, a position table and a convolution train the same on the cache."""
    folder = tiny.save_tiny_backbone(model_type, str(tmp_path / model_type), **tiny.no_dropout(model_type))
    cached = _train(folder, toy_csv, str(tmp_path / "cached"), policy, True)
    naive = _train(folder, toy_csv, str(tmp_path / "naive"), policy, False)
    assert cached.results["train_seconds"] > 0
    cached_weights = cached.classifier.model.get_weights()
    naive_weights = naive.classifier.model.get_weights()
    assert len(cached_weights) == len(naive_weights)
    for ours, theirs in zip(cached_weights, naive_weights):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert cached.results["history"]["loss"] == pytest.approx(naive.results["history"]["loss"], abs=1e-5)
    assert cached.results["history"]["loss"][-1] < cached.results["history"]["loss"][0]


@pytest.fixture(scope="module")
def bert_setup(tiny_bert_dir, toy_csv):
    backbone = tfpeft.load_backbone(tiny_bert_dir)
    config = TrainingConfig(model_name_or_path=tiny_bert_dir, train_file=toy_csv, max_seq_length=32, policy="last_n:1")
    data = prepare_data(config, backbone.tokenizer)
    model = tfpeft.build_classifier(backbone, data.label_map.num_labels)
    policy = apply_policy(backbone, config.policy)
    return backbone, model, policy, data, config


def test_stale_cache_is_not_used(bert_setup, tmp_path, caplog):
    backbone, model, policy, data, config = bert_setup
    store = FeatureStore(str(tmp_path / "cache"), size_limit=2**30)

    def run(data):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tfpeft.features"):
            cached = prepare_feature_cache(model, backbone, policy, data, config, store=store)
        messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Feature cache")]
        return cached, [message.split(":")[1].split()[0] for message in messages]

    first, actions = run(data)
    assert actions == ["computed"] * 3
    assert store.info()["files"] == 3
    again, actions = run(data)
    assert actions == ["reused"] * 3
    np.testing.assert_array_equal(again.arrays["train"]["values"], first.arrays["train"]["values"])

    # Other texts in the training split: only that split is computed again.
    changed = prepare_data(config.replace(max_train_samples=30), backbone.tokenizer, splits=data.splits)
    _, actions = run(changed)
    assert actions == ["computed", "reused", "reused"]

    # Changed backbone weights: every split is computed again, and the features follow them.
    table = backbone.embeddings.weights[0]
    saved = table.numpy()
    try:
        # Random, not a constant shift, which the embeddings' LayerNorm would take out again.
        table.assign(saved + np.random.default_rng(0).normal(size=saved.shape).astype(np.float32))
        updated, actions = run(data)
        assert actions == ["computed"] * 3
        fresh = compute_features(model, backbone, Cut("hidden", 1), data.encoded["train"])
        np.testing.assert_allclose(updated.arrays["train"]["values"], fresh["values"], atol=1e-6)
        assert not np.allclose(updated.arrays["train"]["values"], first.arrays["train"]["values"], atol=1e-3)
    finally:
        table.assign(saved)
    assert store.info()["files"] == 7


def test_stale_derived_cache_is_not_used(bert_setup, tmp_path, caplog):
    """Deeper freezes derived from a shallower cut follow the data and the weights as well."""
    backbone, model, _, data, config = bert_setup
    store = FeatureStore(str(tmp_path / "cache"), size_limit=2**30)
    deeper, pooled = Cut("hidden", 1), Cut("pooled", 2)

    def run(data):
        caplog.clear()
        source = FeatureSource(model, backbone, data, config, store=store, source_depth=0)
        with caplog.at_level(logging.INFO, logger="tfpeft.features"):
            arrays = {cut: source.arrays(cut, "mean") for cut in (deeper, pooled)}
        messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Feature cache")]
        return arrays, [message.split(":")[1].split()[0] for message in messages]

    def direct(cut, split="train"):
        return compute_features(model, backbone, cut, data.encoded[split])["values"]

    first, actions = run(data)
    # The source cut is computed once, then each deeper cut is derived from it, split by split.
    assert actions == ["computed"] * 3 + ["derived"] * 3 + ["reused"] * 3 + ["derived"] * 3
    for cut in (deeper, pooled):
        np.testing.assert_allclose(first[cut]["train"]["values"], direct(cut), atol=1e-5, rtol=0)
    again, actions = run(data)
    assert actions == ["reused"] * 6
    np.testing.assert_array_equal(again[pooled]["train"]["values"], first[pooled]["train"]["values"])

    # Other texts in the training split: that split is derived again from a new source.
    changed = prepare_data(config.replace(max_train_samples=30), backbone.tokenizer, splits=data.splits)
    _, actions = run(changed)
    assert actions == [
        "computed", "reused", "reused", "derived", "reused", "reused",
        "reused", "reused", "reused", "derived", "reused", "reused",
    ]

    # Changed weights of a block the derivation runs (its output LayerNorm's offset, which
    # moves its outputs directly): nothing stored before is read.
    kernel = backbone.blocks[0].weights[-1]
    assert "LayerNorm/beta" in kernel.name
    saved = kernel.numpy()
    try:
        kernel.assign(saved + np.random.default_rng(1).normal(size=saved.shape).astype(np.float32))
        updated, actions = run(data)
        assert actions == ["computed"] * 3 + ["derived"] * 3 + ["reused"] * 3 + ["derived"] * 3
        for cut in (deeper, pooled):
            np.testing.assert_allclose(updated[cut]["train"]["values"], direct(cut), atol=1e-5, rtol=0)
            assert not np.allclose(updated[cut]["train"]["values"], first[cut]["train"]["values"], atol=1e-3)
    finally:
        kernel.assign(saved)


def key_of(letter):
    """Return a cache key (64 hex digits) made of one letter."""
    return letter * 64


def test_least_recently_used_file_is_evicted(tmp_path):
    store = FeatureStore(str(tmp_path), size_limit=10**9)
    arrays = {"values": np.zeros(1000, np.float32)}
    # A user's own .npz file in the folder is neither counted, evicted nor cleared.
    np.savez(tmp_path / "my_results.npz", values=np.zeros(5000, np.float32))
    for index, letter in enumerate("abc"):
        store.save(key_of(letter), arrays)
        os.utime(store.path(key_of(letter)), (1000 + index, 1000 + index))
    store.load(key_of("a"))  # now the most recently used
    size = os.path.getsize(store.path(key_of("a")))
    store.size_limit = 3 * size
    store.save(key_of("d"), arrays)
    kept = sorted(os.path.basename(path) for path, _, _ in store.entries())
    assert kept == [f"{key_of(letter)}.npz" for letter in "acd"]
    assert [entry["file"] for entry in store.info()["entries"]] == [f"{key_of(letter)}.npz" for letter in "cad"]
    assert store.clear() == 3
    assert store.info()["files"] == 0
    assert os.path.exists(tmp_path / "my_results.npz")


def test_unwritable_cache_folder_warns(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = FeatureStore(str(blocker / "features"), size_limit=10**9)
    with caplog.at_level(logging.WARNING, logger="tfpeft.features"):
        assert store.save(key_of("a"), {"values": np.zeros(3, np.float32)}) is False
    assert f"cannot write to {blocker / 'features'}" in caplog.text
    assert "Set TFPEFT_CACHE_DIR to a writable folder, or pass --no-feature-cache" in caplog.text


def test_find_cut_rules(bert_setup, tiny_family_dir, caplog):
    backbone = bert_setup[0]
    assert find_cut(backbone, parse_policy("head"), "mean") == Cut("pooled", 2)
    assert find_cut(backbone, parse_policy("last_n:1"), "mean") == Cut("hidden", 1)
    assert find_cut(backbone, parse_policy("last_n:0"), "pooler") == Cut("pooled", 2)
    assert find_cut(backbone, parse_policy("last_n:1"), "pooler") == Cut("hidden", 1)
    assert find_cut(backbone, parse_policy("bitfit"), "mean") is None
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfpeft.features"):
        assert find_cut(backbone, parse_policy("head"), "mean", frozen_dropout=True) is None
    assert [r.getMessage() for r in caplog.records] == [
        "Feature cache off: frozen_dropout=True makes the frozen part random while training"
    ]
    gpt2 = tfpeft.load_backbone(tiny_family_dir("gpt2"))
    assert find_cut(gpt2, parse_policy("head"), "last") == Cut("pooled", 2)
    assert find_cut(gpt2, parse_policy("last_n:1"), "last") == Cut("hidden", 1)
    # T5's position table lives in block 0 and trains only under last_n:2, where the cut is 0.
    t5 = tfpeft.load_backbone(tiny_family_dir("t5"))
    assert find_cut(t5, parse_policy("last_n:1"), "mean") == Cut("hidden", 1)
    assert find_cut(t5, parse_policy("last_n:2"), "mean") == Cut("hidden", 0)
    # ALBERT's one shared block runs at all 3 depths, so any trained depth puts the cut at 0.
    albert = tfpeft.load_backbone(tiny_family_dir("albert"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfpeft.features"):
        assert find_cut(albert, parse_policy("last_n:1"), "mean") == Cut("hidden", 0)
    assert [r.getMessage() for r in caplog.records] == [
        "Feature cache: shared_block_0 trains and runs at every depth from 0 up, so the cache holds "
        "only the embeddings' output"
    ]


FAMILIES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "albert", "deberta-v2", "mpnet", "gpt2", "t5"]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_top_model_matches_full_model(model_type, tiny_family_dir):
    """On every family, the top model on cached features gives the full model's logits and gradients."""
    import tensorflow as tf

    backbone = tfpeft.load_backbone(tiny_family_dir(model_type))
    pooling = backbone.spec.poolings[0]
    model = tfpeft.build_classifier(backbone, 3, pooling=pooling, dropout=0.0)
    texts, _ = tiny.toy_examples(num_per_class=4)
    encoded = tfpeft.data.encode_texts(backbone.tokenizer, texts, 24)
    # Texts of 3 to 12 words: most rows of the batch carry padding.
    assert len(set(encoded.lengths.tolist())) > 3
    mask = (np.arange(encoded.input_ids.shape[1])[None, :] < encoded.lengths[:, None]).astype(np.int32)
    full_inputs = {"input_ids": encoded.input_ids, "attention_mask": mask}
    labels = np.arange(len(texts)) % 3
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def logits_and_gradients(keras_model, inputs):
        with tf.GradientTape() as tape:
            # Inference mode: the tiny configs keep dropout 0.1, which would make both random.
            logits = keras_model(inputs, training=False)
            value = loss(labels, logits)
        return logits.numpy(), tape.gradient(value, model.trainable_variables)

    # last_n:1 cuts above frozen shared tables (T5, MPNet, DeBERTa-v2) and below GPT-2's and
    # T5's final layer norm. last_n:N cuts at depth 0, where those tables and DeBERTa-v2's
    # convolution train too.
    for policy_name in ("head", "last_n:1", f"last_n:{backbone.num_blocks}"):
        policy = apply_policy(backbone, policy_name, pooling=pooling)
        cut = find_cut(backbone, policy, pooling)
        features = compute_features(model, backbone, cut, encoded)
        top = build_top_model(model, backbone, cut, pooling)
        if cut.kind == "pooled":
            inputs = {"features": features["values"]}
        else:
            rows = np.split(features["values"], np.cumsum(encoded.lengths)[:-1])
            padded = np.zeros((len(rows), mask.shape[1], backbone.hidden_dim), np.float32)
            for index, row in enumerate(rows):
                padded[index, : len(row)] = row
            inputs = {"features": padded, "attention_mask": mask}
        expected, expected_gradients = logits_and_gradients(model, full_inputs)
        logits, gradients = logits_and_gradients(top, inputs)
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
        assert {id(v) for v in top.trainable_variables} == {id(v) for v in model.trainable_variables}
        assert len(gradients) == len(expected_gradients) >= (2 if cut.kind == "pooled" else 6)
        for variable, ours, theirs in zip(model.trainable_variables, gradients, expected_gradients):
            if theirs is None:  # the pooler under mean pooling
                assert ours is None, variable.name
                continue
            np.testing.assert_allclose(tf.convert_to_tensor(ours).numpy(), tf.convert_to_tensor(theirs).numpy(), atol=1e-5, rtol=0, err_msg=variable.name)
    assert tf_keras.mixed_precision.global_policy().name == "float32"


def test_cache_command(tmp_path, monkeypatch, capsys):
    from tfpeft.cli import main

    monkeypatch.setenv("TFPEFT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TFPEFT_CACHE_SIZE_MB", "1")
    FeatureStore().save(key_of("e"), {"values": np.zeros(1000, np.float32)})
    assert main(["cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["folder"] == str(tmp_path / "features")
    assert info["files"] == 1
    assert info["bytes"] == os.path.getsize(tmp_path / "features" / f"{key_of('e')}.npz")
    assert info["size_limit_bytes"] == 2**20
    assert info["entries"][0]["file"] == f"{key_of('e')}.npz"
    assert main(["cache", "info"]) == 0
    listing = capsys.readouterr().out
    assert f"{key_of('e')}.npz" in listing
    assert "of 1 MB" in listing
    assert main(["cache", "clear"]) == 0
    assert "Deleted 1 feature cache files" in capsys.readouterr().out
    assert FeatureStore().info()["files"] == 0
    monkeypatch.setenv("TFPEFT_CACHE_SIZE_MB", "lots")
    assert main(["cache", "info"]) == 1
    assert "TFPEFT_CACHE_SIZE_MB='lots'" in capsys.readouterr().err
