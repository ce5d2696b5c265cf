"""Sentence pairs: training, segment ids in the model, predict, load, evaluate and the CLI."""

import csv
import json
import random

import numpy as np
import pandas as pd
import pytest

import tfpeft
import tiny
from tfpeft.cli import main
from tfpeft.data import encode_texts, make_dataset
from tfpeft.errors import ConfigError

TOPICS = list(tiny.CLASS_WORDS)


def topic_sentence(rng, topic):
    return " ".join(rng.choice(tiny.CLASS_WORDS[topic]) for _ in range(rng.randint(2, 6)))


def pair_frame(num_examples, seed):
    """Pairs labelled ``same`` when both sentences are about one topic, else ``different``."""
    rng = random.Random(seed)
    rows = []
    for i in range(num_examples):
        first = rng.choice(TOPICS)
        second = first if i % 2 == 0 else rng.choice([topic for topic in TOPICS if topic != first])
        rows.append(
            {
                "premise": topic_sentence(rng, first),
                "hypothesis": topic_sentence(rng, second),
                "label": "same" if first == second else "different",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def pair_run(tiny_bert_dir, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("pairs") / "run")
    return tfpeft.train(
        train_data=pair_frame(80, seed=1),
        model_name_or_path=tiny_bert_dir,
        output_dir=output_dir,
        text_column="premise",
        text_pair_column="hypothesis",
        truncation="head_tail",
        max_seq_length=16,
        num_train_epochs=2,
        learning_rate=1e-3,
        policy="full",
        per_device_train_batch_size=8,
        verbose=0,
    )


def test_pair_run_records_pairs_and_truncation(pair_run):
    config = open(f"{pair_run.output_dir}/config.toml").read()
    assert 'text_pair_column = "hypothesis"' in config
    assert 'truncation = "head_tail"' in config
    assert pair_run.results["num_examples"] == {"train": 64, "validation": 8, "test": 8}
    assert pair_run.results["epochs_completed"] == 2
    assert sorted(pair_run.classifier.model.input) == ["attention_mask", "input_ids", "token_type_ids"]


def test_single_text_classifier_has_no_segment_input(tiny_bert_dir):
    backbone = tfpeft.load_backbone(tiny_bert_dir)
    assert sorted(tfpeft.build_classifier(backbone, 2).input) == ["attention_mask", "input_ids"]


def test_segment_ids_reach_the_backbone(pair_run):
    classifier = pair_run.classifier
    encoded = encode_texts(classifier.tokenizer, ["goal match"], 16, text_pairs=["chip phone"])
    features = next(iter(make_dataset(encoded, batch_size=1)))
    zeros = dict(features, token_type_ids=np.zeros_like(features["token_type_ids"]))
    assert features["token_type_ids"].numpy().tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    assert not np.allclose(classifier.model(features).numpy(), classifier.model(zeros).numpy())


def test_predict_encodes_pairs_like_the_tokenizer(pair_run):
    classifier = pair_run.classifier
    texts, pairs = ["goal match team", "vote law"], ["chip phone", "tax senate party"]
    expected_inputs = classifier.tokenizer(texts, pairs, padding=True, return_tensors="tf")
    expected = classifier.model({name: expected_inputs[name] for name in classifier.model.input}).numpy()
    np.testing.assert_allclose(classifier.predict_logits(texts, text_pairs=pairs), expected, atol=1e-5)
    assert set(classifier.predict(texts, text_pairs=pairs)) <= {"same", "different"}


def test_predict_applies_run_truncation(pair_run):
    classifier = pair_run.classifier
    long_text, pair = " ".join(["goal", "vote", "chip", "match", "law", "phone"] * 4), "team coach"
    logits = classifier.predict_logits([long_text], text_pairs=[pair])

    def logits_with(truncation):
        encoded = encode_texts(classifier.tokenizer, [long_text], 16, text_pairs=[pair], truncation=truncation)
        return classifier.model.predict(make_dataset(encoded, batch_size=1), verbose=0)

    np.testing.assert_allclose(logits, logits_with("head_tail"), atol=1e-6)
    assert not np.allclose(logits, logits_with("head"), atol=1e-4)


def test_pairs_required_and_counted(pair_run):
    with pytest.raises(ConfigError, match=r"trained on sentence pairs \(text_pair_column='hypothesis'\)"):
        pair_run.classifier.predict(["goal"])
    with pytest.raises(ConfigError, match="Got 2 texts but 1 text pairs"):
        pair_run.classifier.predict(["goal", "chip"], text_pairs=["vote"])


def test_loaded_pair_classifier_predicts_same(pair_run):
    texts, pairs = ["goal cup", "robot code data", "minister vote"], ["league score", "tax law", "senate party"]
    loaded = tfpeft.load(pair_run.output_dir)
    assert loaded.takes_pairs
    np.testing.assert_allclose(
        loaded.predict_logits(texts, text_pairs=pairs),
        pair_run.classifier.predict_logits(texts, text_pairs=pairs),
        atol=1e-6,
    )


def test_cli_predict_with_text_pairs(pair_run, capsys):
    status = main(["predict", pair_run.output_dir, "--text", "goal match", "--text-pair", "chip phone",
                   "--text", "vote law", "--text-pair", "tax party"])
    assert status == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(record["text"], record["text_pair"]) for record in records] == [
        ("goal match", "chip phone"), ("vote law", "tax party"),
    ]
    assert all(record["label"] in ("same", "different") for record in records)


def test_evaluate_pair_dataframe(pair_run):
    frame = pair_frame(12, seed=7)
    metrics = tfpeft.evaluate(pair_run.output_dir, test_data=frame, name="pairs_eval", verbose=0)
    assert metrics["num_examples"] == 12
    with open(f"{pair_run.output_dir}/eval/pairs_eval/predictions.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [row["text_pair"] for row in rows] == frame["hypothesis"].tolist()
    assert metrics["accuracy"] == np.mean([row["label"] == row["predicted_label"] for row in rows])
