"""End-to-end tests on the real all-MiniLM-L6-v2 and BBC News articles (marked `minilm`)."""

import json
import os

import pytest

import tfpeft

pytestmark = pytest.mark.minilm


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("minilm") / "bbc")
    return tfpeft.train(
        dataset="bbc_news",
        model_name_or_path="minilm",
        policy="last_n:2",
        output_dir=output_dir,
        num_train_epochs=2,
        max_train_samples=400,
        max_eval_samples=100,
        max_seq_length=64,
        verbose=0,
    )


def test_minilm_report_counts(minilm_run):
    results = minilm_run.results
    # 6 blocks of 4*(384*384 + 384) + 2*768 + 384*1536 + 1536 + 1536*384 + 384 + 2*768 = 1,774,464.
    # Head: 384*5 + 5 = 1,925. Total: all-MiniLM-L6-v2 has 22,713,216 parameters, plus the head.
    assert results["trainable_params"] == 2 * 1_774_464 + 1_925
    assert results["total_params"] == 22_713_216 + 1_925
    parts = {part["name"]: part for part in results["parts"]}
    embeddings = 30522 * 384 + 512 * 384 + 2 * 384 + 2 * 384
    assert parts["embeddings"] == {"name": "embeddings", "trainable": 0, "total": embeddings, "lora": 0}


def test_minilm_learns_bbc_news(minilm_run):
    test = minilm_run.results["test"]
    assert test["num_examples"] == 100
    assert test["accuracy"] >= 0.85, test


def test_minilm_run_loads_and_predicts(minilm_run):
    classifier = tfpeft.load(minilm_run.output_dir)
    texts = [
        "The striker scored twice as the club won the league title on Saturday.",
        "Shares fell sharply after the bank reported a drop in quarterly profits.",
    ]
    assert classifier.predict(texts) == minilm_run.classifier.predict(texts)
    assert json.load(open(os.path.join(minilm_run.output_dir, "label_map.json"))) == [
        "business", "entertainment", "politics", "sports", "tech",
    ]


def test_minilm_run_report(minilm_run):
    from PIL import Image

    for name in ("training_curves.png", "confusion_matrix.png"):
        with Image.open(os.path.join(minilm_run.output_dir, name)) as image:
            assert image.format == "PNG"
            assert image.size[0] >= 400
            assert image.size[1] >= 300
    report = open(os.path.join(minilm_run.output_dir, "report.md"), encoding="utf-8").read()
    for name in minilm_run.results["test"]["per_class"]:
        assert f"| {name} | " in report
    assert f"| accuracy | {minilm_run.results['test']['accuracy']:.4f} |" in report
