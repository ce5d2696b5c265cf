"""The architecture registry on a tiny random backbone of every family: parts, names, poolings,
padding and inference mode."""

import logging

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfpeft
import tiny
from tfpeft.data import encode_texts, make_dataset
from tfpeft.errors import ConfigError
from tfpeft.model import SequencePooling

FAMILIES = sorted(tiny.FAMILY_CONFIGS)
H, I = 16, 32  # hidden and feed-forward sizes of every tiny config
DENSE = H * H + H
# A BERT-style block: q, k, v and attention output, two LayerNorms, the feed-forward pair.
BLOCK = 4 * DENSE + 2 * 2 * H + (H * I + I) + (I * H + H)


def expected_parts(model_type, vocab_size):
    """Return ``{part: total parameters}`` computed by hand from the tiny configs."""
    V = vocab_size
    blocks = {"block_0": BLOCK, "block_1": BLOCK}
    pooler = {"pooler": DENSE}

    if model_type == "bert":  # 64 positions, 2 token types, LayerNorm
        return {"embeddings": V * H + 64 * H + 2 * H + 2 * H, **blocks, **pooler}

    if model_type in ("roberta", "xlm-roberta"):  # 66 positions, 1 token type
        return {"embeddings": V * H + 66 * H + H + 2 * H, **blocks, **pooler}

    if model_type == "distilbert":  # 64 positions, no token types
        return {"embeddings": V * H + 64 * H + 2 * H, **blocks}

    if model_type == "electra":  # embedding size 8, then a projection to 16
        return {"embeddings": V * 8 + 64 * 8 + 2 * 8 + 2 * 8 + (8 * H + H), **blocks}

    if model_type == "albert":  # as ELECTRA, and one block shared by 3 depths
        return {"embeddings": V * 8 + 64 * 8 + 2 * 8 + 2 * 8 + (8 * H + H), "shared_block_0": BLOCK, **pooler}

    if model_type == "deberta-v2":
        # No absolute positions or token types. The relative table has 2 * 8 buckets and a
        # LayerNorm, and block 0 adds a width-3 convolution with bias and LayerNorm.
        return {
            "embeddings": V * H + 2 * H,
            "rel_embeddings": 2 * 8 * H + 2 * H,
            "block_0": BLOCK + 3 * H * H + H + 2 * H,
            "block_1": BLOCK,
        }

    if model_type == "mpnet":  # 66 positions, 8 buckets x 2 heads of relative attention bias
        return {"embeddings": V * H + 66 * H + 2 * H, "relative_attention_bias": 8 * 2, **blocks, **pooler}

    if model_type == "gpt2":  # Conv1D layers hold the same counts as Dense ones
        return {"embeddings": V * H + 64 * H, **blocks, "final_norm": 2 * H}

    assert model_type == "t5"
    # No biases: q, k, v and o of 16 x 16, a scale-only layer norm per sublayer, wi and wo.
    t5_block = 4 * H * H + H + H * I + I * H + H
    return {
        "embeddings": V * H,
        "relative_attention_bias": 8 * 2,
        "block_0": t5_block,
        "block_1": t5_block,
        "final_norm": H,
    }


@pytest.fixture(scope="module")
def loaded(tiny_family_dir):
    """A function that returns each family's backbone, loaded once per module."""
    backbones = {}

    def load(model_type):
        if model_type not in backbones:
            backbones[model_type] = tfpeft.load_backbone(tiny_family_dir(model_type))
        return backbones[model_type]

    return load


@pytest.mark.parametrize("model_type", FAMILIES)
def test_parts_and_counts(model_type, loaded):
    backbone = loaded(model_type)
    parts = {part.name: sum(int(v.shape.num_elements()) for v in part.variables) for part in backbone.parts()}
    assert parts == expected_parts(model_type, backbone.config.vocab_size)
    assert list(parts) == list(expected_parts(model_type, backbone.config.vocab_size))
    assert sum(parts.values()) == sum(int(v.shape.num_elements()) for v in backbone.main_layer.weights)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_block_count(model_type, loaded):
    backbone = loaded(model_type)
    assert backbone.num_blocks == (3 if model_type == "albert" else 2)
    assert backbone.hidden_dim == H


def test_t5_loads_encoder_only(loaded):
    backbone = loaded("t5")
    assert type(backbone.model).__name__ == "TFT5EncoderModel"
    assert type(backbone.main_layer).__name__ == "TFT5MainLayer"
    assert not any("decoder" in name for name, _ in backbone.named_variables())


def test_albert_runs_one_block_at_every_depth(loaded):
    backbone = loaded("albert")
    assert len(backbone.block_layers) == 1
    assert all(block is backbone.block_layers[0] for block in backbone.blocks)
    (shared,) = [part for part in backbone.parts() if part.role == "shared_block"]
    assert shared.depths == (0, 1, 2)


def test_albert_groups_follow_depth_ranges():
    # Two groups over four depths: depths 0-1 run group 0 and depths 2-3 run group 1.
    import transformers

    settings = {**tiny.FAMILY_CONFIGS["albert"][2], "num_hidden_layers": 4, "num_hidden_groups": 2}
    model = transformers.TFAlbertModel(transformers.AlbertConfig(**settings, vocab_size=60))
    model(model.dummy_inputs)
    backbone = tfpeft.Backbone(model, tokenizer=None, source="in memory")
    shared = [part for part in backbone.parts() if part.role == "shared_block"]
    assert [(part.name, part.depths) for part in shared] == [("shared_block_0", (0, 1)), ("shared_block_1", (2, 3))]
    assert backbone.blocks == [shared[0].layers[0]] * 2 + [shared[1].layers[0]] * 2

    def trained_parts(policy):
        return tfpeft.parse_policy(policy).trainable_part_names(backbone, "mean")

    assert trained_parts("last_n:1") == trained_parts("last_n:2") == {"shared_block_1"}
    assert trained_parts("last_n:3") == {"shared_block_0", "shared_block_1"}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_weight_names_are_stable(model_type, loaded, tiny_family_dir):
    backbone = loaded(model_type)
    named = backbone.named_variables()
    names = [name for name, _ in named]
    assert len(set(names)) == len(names) == len(backbone.main_layer.weights)
    for name in names:
        assert not name.startswith((backbone.model.name, backbone.main_layer.name + "/")), name
        assert ":" not in name

    # A second load builds variables under another model-instance prefix, as tfpeft.load does.
    again = tfpeft.load_backbone(tiny_family_dir(model_type), pretrained=False)
    assert {v.name for v in again.main_layer.weights} != {v.name for v in backbone.main_layer.weights}
    assert sorted(name for name, _ in again.named_variables()) == sorted(names)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_projection_names_extend_layer_names(model_type, loaded):
    backbone = loaded(model_type)
    names = {id(variable): name for name, variable in backbone.named_variables()}
    # Dense layers, and GPT-2's TFConv1D, which keeps its matrix in `weight`.
    projections = []
    for name, layer in backbone.named_layers():
        if isinstance(layer, tf_keras.layers.Dense):
            projections.append((name, layer.kernel, "kernel"))
        elif type(layer).__name__ == "TFConv1D":
            projections.append((name, layer.weight, "weight"))
    assert len(projections) >= 2 * 4
    for name, matrix, matrix_name in projections:
        assert names[id(matrix)] == f"{name}/{matrix_name}"


def test_bert_weight_name_example(loaded):
    names = dict(loaded("bert").named_variables())
    assert "encoder/layer_._1/attention/self/query/kernel" in names
    assert names["embeddings/word_embeddings/weight"].shape == (100, H)


def test_t5_encoder_loads_from_encoder_decoder_folder(tmp_path):
    # Hub T5 checkpoints hold the whole encoder-decoder model.
    import transformers

    folder = str(tmp_path)
    tiny.tiny_tokenizer("t5", folder).save_pretrained(folder)
    settings = tiny.FAMILY_CONFIGS["t5"][2]
    full = transformers.TFT5Model(transformers.T5Config(**settings, vocab_size=60))
    full(input_ids=tf.constant([[4, 5, 6]]), decoder_input_ids=tf.constant([[0, 4]]))
    full.save_pretrained(folder)

    backbone = tfpeft.load_backbone(folder)
    assert type(backbone.model).__name__ == "TFT5EncoderModel"
    saved = {v.name.split("/", 1)[1]: v for v in full.encoder.weights if "/block_._" in v.name}
    loaded_blocks = {v.name.split("/", 1)[1]: v for v in backbone.main_layer.weights if "/block_._" in v.name}
    assert saved.keys() == loaded_blocks.keys()
    for name, variable in loaded_blocks.items():
        np.testing.assert_array_equal(variable.numpy(), saved[name].numpy())
    np.testing.assert_array_equal(backbone.embeddings.embeddings.numpy(), full.shared.embeddings.numpy())


def test_gpt2_layer_norms_are_not_decayed(loaded):
    from tfpeft.training import create_optimizer

    backbone = loaded("gpt2")
    optimizer = create_optimizer(tfpeft.TrainingConfig(output_dir="unused", weight_decay=0.01), total_steps=1)
    decayed = {name for name, v in backbone.named_variables() if optimizer._use_weight_decay(v)}
    assert decayed == {"wte/embeddings", "wpe/embeddings"} | {
        f"h_._{i}/{layer}/weight" for i in (0, 1) for layer in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")
    }


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_listed_pooling_builds(model_type, loaded):
    backbone = loaded(model_type)
    for pooling in backbone.spec.poolings:
        model = tfpeft.build_classifier(backbone, 3, pooling=pooling)
        logits = model({"input_ids": tf.constant([[5, 6, 7]]), "attention_mask": tf.constant([[1, 1, 1]])})
        assert logits.shape == (1, 3)


@pytest.mark.parametrize("model_type, pooling", [("gpt2", "pooler"), ("gpt2", "cls"), ("t5", "cls"), ("distilbert", "pooler")])
def test_pooling_that_does_not_apply_fails(model_type, pooling, loaded):
    backbone = loaded(model_type)
    with pytest.raises(ConfigError, match=rf"pooling='{pooling}' does not apply to this {model_type} backbone"):
        tfpeft.build_classifier(backbone, 3, pooling=pooling)


def test_last_pooling_takes_last_real_token():
    hidden = tf.reshape(tf.range(2 * 4 * 3, dtype=tf.float32), (2, 4, 3))
    right_padded = tf.constant([[1, 1, 0, 0], [1, 1, 1, 1]])
    left_padded = tf.constant([[0, 0, 1, 1], [0, 1, 1, 1]])
    one_empty = tf.constant([[0, 0, 0, 0], [1, 0, 0, 0]])
    pooling = SequencePooling("last")
    np.testing.assert_array_equal(pooling(hidden, right_padded), hidden.numpy()[[0, 1], [1, 3]])
    np.testing.assert_array_equal(pooling(hidden, left_padded), hidden.numpy()[[0, 1], [3, 3]])
    np.testing.assert_array_equal(pooling(hidden, one_empty), [np.zeros(3), hidden.numpy()[1, 0]])
    # A batch of empty texts has length 0, which GPT-2's tokenizer gives for an empty string.
    np.testing.assert_array_equal(pooling(tf.zeros((2, 0, 3)), tf.zeros((2, 0), tf.int32)), np.zeros((2, 3)))


def test_gpt2_classifier_predicts_empty_text(loaded):
    backbone = loaded("gpt2")
    model = tfpeft.build_classifier(backbone, 3, pooling="last")
    encoded = encode_texts(backbone.tokenizer, ["", ""], max_seq_length=16)
    assert encoded.input_ids.shape == (2, 0)
    logits = model.predict(make_dataset(encoded, batch_size=2), verbose=0)
    np.testing.assert_allclose(logits, np.tile(model.get_layer("head").bias.numpy(), (2, 1)), atol=1e-6)


def test_gpt2_pads_with_end_of_sequence_token(tiny_family_dir, caplog):
    with caplog.at_level(logging.INFO, logger="tfpeft.backbones"):
        backbone = tfpeft.load_backbone(tiny_family_dir("gpt2"))
    tokenizer = backbone.tokenizer
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert "no padding token; padding with its end-of-sequence token '<|endoftext|>'" in caplog.text
    encoded = encode_texts(tokenizer, ["goal", "goal match team"], max_seq_length=16)
    assert encoded.pad_token_id == tokenizer.eos_token_id
    assert encoded.input_ids[0, encoded.lengths[0]:].tolist() == [tokenizer.eos_token_id] * (
        encoded.input_ids.shape[1] - encoded.lengths[0]
    )


@pytest.mark.parametrize("model_type", FAMILIES)
def test_frozen_parts_run_in_inference_mode(model_type, loaded):
    backbone = loaded(model_type)
    encoded = encode_texts(backbone.tokenizer, ["goal match team today", "chip phone"], max_seq_length=16)
    features = {
        "input_ids": tf.constant(encoded.input_ids),
        "attention_mask": tf.sequence_mask(encoded.lengths, encoded.input_ids.shape[1], dtype=tf.int32),
    }

    def hidden_states(training):
        outputs = backbone.main_layer(
            **features, output_hidden_states=True, training=training, **dict(backbone.spec.call_arguments)
        )
        return [state.numpy() for state in outputs.hidden_states]

    try:
        tfpeft.apply_policy(backbone, "head")
        first, second, inference = hidden_states(True), hidden_states(True), hidden_states(False)
        for a, b, c in zip(first, second, inference):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)

        tfpeft.apply_policy(backbone, "head", frozen_dropout=True)
        assert not np.array_equal(hidden_states(True)[-1], hidden_states(True)[-1])

        # The frozen embeddings give the same output; the trained last block applies dropout.
        tfpeft.apply_policy(backbone, "last_n:1")
        first, second = hidden_states(True), hidden_states(True)
        np.testing.assert_array_equal(first[0], second[0])
        assert not np.array_equal(first[-1], second[-1])
        if model_type != "albert":  # ALBERT's one shared block trains at every depth
            np.testing.assert_array_equal(first[-2], second[-2])

        tfpeft.apply_policy(backbone, "last_n:1", frozen_dropout=True)
        assert not np.array_equal(hidden_states(True)[0], hidden_states(True)[0])
    finally:
        tfpeft.apply_policy(backbone, "head")
