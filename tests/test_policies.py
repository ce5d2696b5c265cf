import numpy as np
import pytest
import tensorflow as tf

import tfpeft
from tfpeft.config import TrainingConfig
from tfpeft.errors import ConfigError
from tfpeft.policies import Policy, parse_policy

# Hand counts for the tiny BERT of tests/tiny.py (V=100, H=16, I=32, P=64, T=2) and 3 classes.
# embeddings: V*H + P*H + T*H + LayerNorm 2H = 1600 + 1024 + 32 + 32
EMBEDDINGS = 2688
# block: q, k, v and attention output 4*(H*H + H) + LayerNorm 2H + intermediate H*I + I
#        + output I*H + H + LayerNorm 2H = 1088 + 32 + 544 + 528 + 32
BLOCK = 2224
# pooler: H*H + H
POOLER = 272
# head: H*3 + 3
HEAD = 51
TOTAL = EMBEDDINGS + 2 * BLOCK + POOLER + HEAD


@pytest.fixture(scope="module")
def tiny_backbone(tiny_bert_dir):
    return tfpeft.load_backbone(tiny_bert_dir)


def build(backbone, policy, pooling="mean"):
    model = tfpeft.build_classifier(backbone, 3, pooling=pooling)
    tfpeft.apply_policy(backbone, policy, pooling=pooling)
    return model


def part_counts(report):
    return {part.name: (part.trainable, part.total) for part in report.parts}


def test_parse_policy_names():
    assert parse_policy("head") == Policy("head")
    assert parse_policy("last_n:2") == Policy("last_n", 2)
    assert parse_policy("full").name == "full"
    assert parse_policy(" last_n:0 ").name == "last_n:0"
    for kind in ("bitfit", "layernorm", "embeddings_frozen"):
        assert parse_policy(kind) == Policy(kind)


def test_parse_pattern_policy():
    policy = parse_policy("pattern:include=attention/self/(query|value)/kernel,exclude=layer_._[01]/")
    assert policy == Policy("pattern", include="attention/self/(query|value)/kernel", exclude="layer_._[01]/")
    assert parse_policy("pattern:exclude=embeddings") == Policy("pattern", exclude="embeddings")
    # A comma inside a regular expression does not split it.
    assert parse_policy("pattern:include=layer_._\\d{1,2}/").include == "layer_._\\d{1,2}/"


@pytest.mark.parametrize(
    "policy",
    ["head", "last_n:3", "full", "bitfit", "layernorm", "embeddings_frozen", "pattern:include=query,exclude=layer_._0/",
     "pattern:exclude=LayerNorm", "pattern:include=a{1,3}"],
)
def test_policy_name_round_trips(policy):
    assert parse_policy(policy).name == policy
    assert parse_policy(parse_policy(policy).name) == parse_policy(policy)


@pytest.mark.parametrize(
    "text, message",
    [
        ("last_n", "last_n needs an integer block count"),
        ("last_n:x", "last_n needs an integer block count"),
        ("last_n:-1", "K >= 0"),
        ("bitfitt", "Unknown policy kind 'bitfitt'.* Did you mean 'bitfit'"),
        ("head:2", "'head' takes no argument"),
        ("pattern", "pattern needs include=REGEX, exclude=REGEX or both"),
        ("pattern:query", "expected include=REGEX or exclude=REGEX after 'pattern:', got 'query'"),
        ("pattern:include=a,include=b", "include= is given twice"),
        ("pattern:include=", "include must be a non-empty regular expression"),
        ("pattern:include=(query", r"include='\(query' is not a valid regular expression"),
    ],
)
def test_parse_policy_rejects(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_policy(text)


def test_policy_kind_takes_no_pattern():
    with pytest.raises(ConfigError, match="takes no include or exclude pattern"):
        Policy("bitfit", include="bias")


def test_last_n_above_block_count_gives_range(tiny_backbone):
    with pytest.raises(ConfigError, match=r"last_n:3 .*use K in 0\.\.2 for this 2-block bert"):
        build(tiny_backbone, "last_n:3")


def test_report_head(tiny_backbone):
    report = tfpeft.parameter_report(build(tiny_backbone, "head"), tiny_backbone)
    assert part_counts(report) == {
        "embeddings": (0, 2688),
        "block_0": (0, 2224),
        "block_1": (0, 2224),
        "pooler": (0, 272),
        "head": (51, 51),
    }
    assert report.total_params == TOTAL == 7459
    assert report.trainable_params == 51


def test_report_last_n_1(tiny_backbone):
    model = build(tiny_backbone, "last_n:1")
    report = tfpeft.parameter_report(model, tiny_backbone)
    assert part_counts(report)["block_0"] == (0, 2224)
    assert part_counts(report)["block_1"] == (2224, 2224)
    assert part_counts(report)["pooler"] == (0, 272)
    assert report.trainable_params == 2224 + 51 == 2275
    assert report.total_params == model.count_params() == 7459


def test_report_full_with_mean_pooling_freezes_pooler(tiny_backbone):
    report = tfpeft.parameter_report(build(tiny_backbone, "full"), tiny_backbone)
    assert report.trainable_params == 2688 + 2 * 2224 + 51 == 7187
    assert part_counts(report)["pooler"] == (0, 272)


def test_report_full_with_pooler_pooling_trains_pooler(tiny_backbone):
    report = tfpeft.parameter_report(build(tiny_backbone, "full", pooling="pooler"), tiny_backbone)
    assert report.trainable_params == TOTAL
    assert part_counts(report)["pooler"] == (272, 272)


def test_report_head_with_pooler_pooling_keeps_pooler_frozen(tiny_backbone):
    report = tfpeft.parameter_report(build(tiny_backbone, "head", pooling="pooler"), tiny_backbone)
    assert report.trainable_params == HEAD


@pytest.mark.parametrize("pooling", ["mean", "pooler"])
def test_last_n_0_equals_head(tiny_backbone, pooling):
    head = tfpeft.parameter_report(build(tiny_backbone, "head", pooling), tiny_backbone).to_dict()
    last_0 = tfpeft.parameter_report(build(tiny_backbone, "last_n:0", pooling), tiny_backbone).to_dict()
    assert head == last_0
    assert head["trainable_params"] == HEAD


def test_bitfit_with_pooler_pooling_trains_pooler_bias(tiny_backbone):
    report = tfpeft.parameter_report(build(tiny_backbone, "bitfit", pooling="pooler"), tiny_backbone)
    # Biases: embeddings LayerNorm 16; per block q, k, v, attention output 4*16, two LayerNorm
    # betas 2*16, intermediate 32, output 16 = 144; pooler 16.
    assert part_counts(report) == {
        "embeddings": (16, 2688),
        "block_0": (144, 2224),
        "block_1": (144, 2224),
        "pooler": (16, 272),
        "head": (51, 51),
    }


def test_layernorm_report_counts(tiny_backbone):
    report = tfpeft.parameter_report(build(tiny_backbone, "layernorm"), tiny_backbone)
    # LayerNorm gamma and beta, 2*16 each: one in the embeddings, two in each block.
    assert part_counts(report) == {
        "embeddings": (32, 2688),
        "block_0": (64, 2224),
        "block_1": (64, 2224),
        "pooler": (0, 272),
        "head": (51, 51),
    }


def test_embeddings_frozen_report_counts(tiny_backbone):
    report = tfpeft.parameter_report(build(tiny_backbone, "embeddings_frozen"), tiny_backbone)
    assert report.trainable_params == 2 * BLOCK + HEAD
    assert part_counts(report)["embeddings"] == (0, EMBEDDINGS)


def test_reapplying_policy_restores_moved_variables(tiny_backbone):
    model = build(tiny_backbone, "full")
    full_weights = [v.name for v in model.weights]
    tfpeft.apply_policy(tiny_backbone, "bitfit")
    # The embeddings' LayerNorm beta, 8 bias vectors per block, the head's kernel and bias.
    assert len(model.trainable_variables) == 1 + 2 * 8 + 2
    tfpeft.apply_policy(tiny_backbone, "full")
    assert [v.name for v in model.weights] == full_weights
    assert len(model.trainable_variables) == len(model.weights) - 2


def test_one_step_updates_only_unfrozen(tiny_backbone):
    tf.keras.utils.set_random_seed(1)
    model = build(tiny_backbone, "last_n:1")
    config = TrainingConfig(output_dir="unused", learning_rate=1e-2, warmup_ratio=0.0)
    tfpeft.compile_classifier(model, config, total_steps=1)
    before = {id(v): v.numpy().copy() for v in model.weights}
    trainable_ids = {id(v) for v in model.trainable_variables}

    features = {
        "input_ids": tf.constant([[2, 17, 18, 3], [2, 25, 3, 0]], tf.int32),
        "attention_mask": tf.constant([[1, 1, 1, 1], [1, 1, 1, 0]], tf.int32),
    }
    model.fit(features, tf.constant([0, 2]), batch_size=2, epochs=1, verbose=0)

    frozen = [v for v in model.weights if id(v) not in trainable_ids]
    assert len(frozen) > 0
    for variable in frozen:
        assert np.array_equal(variable.numpy(), before[id(variable)]), variable.name

    head = model.get_layer("head")
    for variable in head.trainable_weights:
        assert not np.array_equal(variable.numpy(), before[id(variable)]), variable.name
    block_1 = [v for v in tiny_backbone.blocks[1].weights]
    changed = [v for v in block_1 if not np.array_equal(v.numpy(), before[id(v)])]
    assert changed, "no variable of the unfrozen block changed"


def test_frozen_blocks_run_in_inference_mode(tiny_bert_dir):
    backbone = tfpeft.load_backbone(tiny_bert_dir)
    tfpeft.build_classifier(backbone, 3, dropout=0.0)
    features = {
        "input_ids": tf.constant([[2, 17, 18, 19, 3]], tf.int32),
        "attention_mask": tf.constant([[1, 1, 1, 1, 1]], tf.int32),
    }

    tfpeft.apply_policy(backbone, "head")
    first = backbone.main_layer(**features, training=True).last_hidden_state
    second = backbone.main_layer(**features, training=True).last_hidden_state
    inference = backbone.main_layer(**features, training=False).last_hidden_state
    np.testing.assert_array_equal(first.numpy(), second.numpy())
    np.testing.assert_array_equal(first.numpy(), inference.numpy())

    tfpeft.apply_policy(backbone, "head", frozen_dropout=True)
    noisy = backbone.main_layer(**features, training=True).last_hidden_state
    assert not np.array_equal(noisy.numpy(), inference.numpy())


def test_pattern_on_pooler_needs_pooler_pooling(tiny_backbone):
    with pytest.raises(ConfigError, match="selects no variable of this bert backbone outside the pooler"):
        build(tiny_backbone, "pattern:include=^pooler/")
    report = tfpeft.parameter_report(build(tiny_backbone, "pattern:include=^pooler/", pooling="pooler"), tiny_backbone)
    assert report.trainable_params == POOLER + HEAD
