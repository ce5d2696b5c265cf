"""Every freezing policy on a tiny random backbone of every registered family.

Each case applies a policy, compiles, runs two optimizer steps with ``fit`` (warmup off), and
checks the variables the optimizer updates against a trainable set that the test derives on its
own from stable weight names, with the table ``LAYOUTS`` of where each family keeps its parts.
The fits run eagerly: tracing a graph for each of the 80 cases would cost about 5 s apiece,
and graph-mode training under these policies is covered by test_policy_runs.py.
"""

import dataclasses
import re

import numpy as np
import pytest

import tfpeft
import tiny
from tfpeft.config import TrainingConfig
from tfpeft.data import encode_texts, make_dataset
from tfpeft.errors import ConfigError

FAMILIES = sorted(tiny.FAMILY_CONFIGS)

# Where each family keeps each report row, as regular expressions over stable weight names,
# written from the transformers 4.54.1 TF layouts. The first matching row wins.
_BERT_ROWS = [
    ("embeddings", r"^embeddings/"),
    ("block_0", r"^encoder/layer_\._0/"),
    ("block_1", r"^encoder/layer_\._1/"),
    ("pooler", r"^pooler/"),
]
LAYOUTS = {
    "bert": _BERT_ROWS,
    "roberta": _BERT_ROWS,
    "xlm-roberta": _BERT_ROWS,
    "electra": [("embeddings", r"^(embeddings|embeddings_project)/")] + _BERT_ROWS[1:3],
    "distilbert": [
        ("embeddings", r"^embeddings/"),
        ("block_0", r"^transformer/layer_\._0/"),
        ("block_1", r"^transformer/layer_\._1/"),
    ],
    "albert": [
        ("embeddings", r"^(embeddings|encoder/embedding_hidden_mapping_in)/"),
        ("shared_block_0", r"^encoder/albert_layer_groups_\._0/"),
        ("pooler", r"^pooler/"),
    ],
    "deberta-v2": [
        ("embeddings", r"^embeddings/"),
        ("rel_embeddings", r"^encoder/(rel_embeddings\.weight$|LayerNorm/)"),
        ("block_0", r"^encoder/(layer_\._0|conv)/"),
        ("block_1", r"^encoder/layer_\._1/"),
    ],
    "mpnet": [
        ("embeddings", r"^embeddings/"),
        ("relative_attention_bias", r"^encoder/relative_attention_bias/"),
        *_BERT_ROWS[1:],
    ],
    "gpt2": [
        ("embeddings", r"^(wte|wpe)/"),
        ("block_0", r"^h_\._0/"),
        ("block_1", r"^h_\._1/"),
        ("final_norm", r"^ln_f/"),
    ],
    "t5": [
        ("embeddings", r"^shared/"),
        ("relative_attention_bias", r"^block_\._0/layer_\._0/SelfAttention/relative_attention_bias/"),
        ("block_0", r"^block_\._0/"),
        ("block_1", r"^block_\._1/"),
        ("final_norm", r"^final_layer_norm/"),
    ],
}
BIAS_NAME = re.compile(r"(/bias|_bias|/beta)$")
LAYER_NORM_NAME = re.compile(r"(LayerNorm|layer_norm|(^|/)ln_(\d|f))/")
PATTERN_INCLUDE = "attention|attn|SelfAttention"
PATTERN_EXCLUDE = "bias"
PATTERN = f"pattern:include={PATTERN_INCLUDE},exclude={PATTERN_EXCLUDE}"
# "last_n:num_blocks" is replaced by each backbone's own block count.
POLICIES = ["head", "last_n:1", "last_n:num_blocks", "full", "bitfit", "layernorm", "embeddings_frozen", PATTERN]
CONFIG = TrainingConfig(output_dir="unused", learning_rate=1e-2, warmup_ratio=0.0)


@dataclasses.dataclass
class FamilyCase:
    backbone: object
    model: object
    pooling: str
    dataset: object
    rows: dict  # stable name -> report row name, from LAYOUTS


def classify(model_type, names):
    rows = {}
    for name in names:
        matches = [row for row, pattern in LAYOUTS[model_type] if re.search(pattern, name)]
        assert matches, f"{model_type}: {name} is in no row of LAYOUTS"
        rows[name] = matches[0]
    return rows


@pytest.fixture(scope="module")
def family_case(tiny_family_dir):
    """A function that returns each family's backbone, classifier and data, built once."""
    cases = {}

    def case(model_type):
        if model_type not in cases:
            backbone = tfpeft.load_backbone(tiny_family_dir(model_type))
            # The family's usual pooling: mean for encoders, the last token for GPT-2.
            pooling = backbone.spec.poolings[0]
            model = tfpeft.build_classifier(backbone, 3, pooling=pooling)
            texts, _ = tiny.toy_examples(num_per_class=3)
            encoded = encode_texts(backbone.tokenizer, texts[:8], max_seq_length=16)
            dataset = make_dataset(encoded, [0, 1, 2, 0, 1, 2, 0, 1], batch_size=4)
            rows = classify(model_type, [name for name, _ in backbone.named_variables()])
            cases[model_type] = FamilyCase(backbone, model, pooling, dataset, rows)
        return cases[model_type]

    return case


def policy_for(policy, backbone):
    return policy.replace("num_blocks", str(backbone.num_blocks))


def expected_trainable(model_type, policy, case):
    """Return the stable names that ``policy`` must train, from LAYOUTS alone."""
    num_blocks = case.backbone.num_blocks
    names = [name for name, row in case.rows.items() if row != "pooler"]
    all_blocks_rows = {row for row, _ in LAYOUTS[model_type]} - {"embeddings", "pooler"}
    last_block_rows = {f"block_{num_blocks - 1}", "final_norm", "shared_block_0"}
    if policy == "head":
        return set()
    if policy == "full":
        return set(names)
    if policy == "last_n:1":
        return {name for name in names if case.rows[name] in last_block_rows}
    if policy in ("last_n:num_blocks", "embeddings_frozen"):
        return {name for name in names if case.rows[name] in all_blocks_rows}
    if policy == "bitfit":
        return {name for name in names if BIAS_NAME.search(name)}
    if policy == "layernorm":
        return {name for name in names if LAYER_NORM_NAME.search(name)}
    assert policy == PATTERN
    return {
        name for name in names if re.search(PATTERN_INCLUDE, name) and not re.search(PATTERN_EXCLUDE, name)
    }


def optimized_variables(model):
    """Return the model variables for which the optimizer keeps a first-moment slot."""
    moments = {v.name for v in model.optimizer.variables if v.name.startswith("AdamW/m/")}
    optimized = [v for v in model.weights if f"AdamW/m/{v.name}" in moments]
    assert len(optimized) == len(moments), "a moment slot matches no model variable"
    return optimized


def num_elements(variables):
    return sum(int(v.shape.num_elements()) for v in variables)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_policy_trains_exactly_its_variables(model_type, policy, family_case):
    case = family_case(model_type)
    backbone, model = case.backbone, case.model
    if model_type == "t5" and policy == "bitfit":
        pytest.skip("T5 has no bias terms; test_bitfit_without_biases_fails covers it")
    expected = expected_trainable(model_type, policy, case)

    tfpeft.apply_policy(backbone, policy_for(policy, backbone), pooling=case.pooling)
    tfpeft.compile_classifier(model, CONFIG, total_steps=2)
    model.run_eagerly = True
    before = {id(v): v.numpy().copy() for v in model.weights}
    model.fit(case.dataset, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2

    optimized = optimized_variables(model)
    optimized_ids = {id(v) for v in optimized}
    names = {id(variable): name for name, variable in backbone.named_variables()}
    assert {names[id(v)] for v in optimized if id(v) in names} == expected
    head = model.get_layer("head")
    assert {id(v) for v in head.weights} <= optimized_ids
    assert optimized_ids == {id(v) for v in model.trainable_variables}

    for variable in model.weights:
        label = names.get(id(variable), variable.name)
        if id(variable) in optimized_ids:
            assert not np.array_equal(variable.numpy(), before[id(variable)]), f"{label} did not change"
        else:
            assert np.array_equal(variable.numpy(), before[id(variable)]), f"frozen {label} changed"

    report = tfpeft.parameter_report(model, backbone)
    counts = {part.name: (part.trainable, part.total) for part in report.parts}
    backbone_optimized = [v for v in optimized if id(v) in names]
    for row in {row for row, _ in LAYOUTS[model_type]}:
        in_row = [v for _, v in backbone.named_variables() if case.rows[names[id(v)]] == row]
        optimized_in_row = [v for v in backbone_optimized if case.rows[names[id(v)]] == row]
        assert counts[row] == (num_elements(optimized_in_row), num_elements(in_row)), row
    assert counts["head"] == (num_elements(head.weights), num_elements(head.weights))
    assert "other" not in counts
    assert report.trainable_params == num_elements(optimized)
    assert report.total_params == model.count_params()
    frozen = [v for v in model.weights if id(v) not in optimized_ids]
    assert report.trainable_params + num_elements(frozen) == report.total_params


@pytest.mark.parametrize("model_type", FAMILIES)
def test_last_n_0_equals_head(model_type, family_case):
    case = family_case(model_type)
    reports = {}
    trainable = {}
    for policy in ("head", "last_n:0"):
        tfpeft.apply_policy(case.backbone, policy, pooling=case.pooling)
        reports[policy] = tfpeft.parameter_report(case.model, case.backbone).to_dict(weights=True)
        trainable[policy] = {id(v) for v in case.model.trainable_variables}
    assert reports["head"] == reports["last_n:0"]
    assert trainable["head"] == trainable["last_n:0"]
    assert trainable["head"] == {id(v) for v in case.model.get_layer("head").weights}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_last_n_above_block_count_gives_range(model_type, family_case):
    backbone = family_case(model_type).backbone
    num_blocks = backbone.num_blocks
    with pytest.raises(ConfigError, match=rf"use K in 0\.\.{num_blocks} for this {num_blocks}-block {model_type} backbone"):
        tfpeft.apply_policy(backbone, f"last_n:{num_blocks + 1}")


def test_bitfit_without_biases_fails(family_case):
    backbone = family_case("t5").backbone
    with pytest.raises(ConfigError, match=r"bitfit selects no variable of this t5 backbone: it has no bias terms"):
        tfpeft.apply_policy(backbone, "bitfit")


def test_pattern_matching_nothing_lists_names(family_case):
    backbone = family_case("gpt2").backbone
    with pytest.raises(ConfigError, match=r"selects no variable of this gpt2 backbone\. Names look like 'wte/embeddings'"):
        tfpeft.apply_policy(backbone, "pattern:include=query")
