"""In-memory sources (DataFrames, dicts, lists), split checks, duplicates and class weights."""

import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.class_weight import compute_class_weight

import tfpeft
from tfpeft.config import TrainingConfig
from tfpeft.data import from_dataframe, to_examples
from tfpeft.data.labels import balanced_class_weights, class_counts
from tfpeft.data.loading import load_splits
from tfpeft.errors import ConfigError, DataError


def test_dataframe_errors_name_index_labels():
    frame = pd.DataFrame(
        {"text": ["goal", "chip", "vote", "law"], "label": ["sport", np.nan, "politics", None]},
        index=["a", "b", "c", "d"],
    )
    with pytest.raises(DataError) as error:
        from_dataframe(frame, name="train_data")
    assert str(error.value) == (
        "DataFrame train_data: 2 rows without a label in column 'label' (index 'b', index 'd'). "
        "Fill in or remove those rows."
    )


def test_dataframe_float_labels_rejected_integral_kept():
    frame = pd.DataFrame({"text": ["goal", "chip", "vote"], "label": [0.0, 1.0, 2.0]})
    assert from_dataframe(frame).labels == [0, 1, 2]
    frame.loc[1, "label"] = 0.7
    with pytest.raises(DataError, match=r"column 'label' contains float values \(0\.7 at index 1\)"):
        from_dataframe(frame)


def test_dataframe_missing_column_lists_columns():
    frame = pd.DataFrame({"sentence": ["goal"], "label": ["sport"]})
    with pytest.raises(DataError, match=r"DataFrame dataframe has no text column 'text'\. Its columns are: sentence, label"):
        from_dataframe(frame)


def test_to_examples_accepts_tuples_and_dicts():
    examples = to_examples((["goal", " ", "chip"], ["sport", "tech", "tech"]), name="train_data")
    assert examples.texts == ["goal", "chip"]
    assert examples.rows == ["item 0", "item 2"]
    pairs = to_examples((["a cat"], ["an animal"], [1]))
    assert pairs.text_pairs == ["an animal"]
    columns = to_examples({"body": ["goal"], "y": ["sport"]}, text_column="body", label_column="y")
    assert columns.labels == ["sport"]
    with pytest.raises(DataError, match="columns have different lengths"):
        to_examples({"text": ["a", "b"], "label": ["x"]})
    with pytest.raises(DataError, match="train_data is a list; pass a pandas DataFrame"):
        to_examples(["goal", "chip"], name="train_data")


def test_unseen_validation_label_in_dataframe():
    train = pd.DataFrame({"text": ["goal", "chip"] * 10, "label": ["sport", "tech"] * 10})
    validation = pd.DataFrame({"text": ["vote", "goal"], "label": ["politics", "sport"]}, index=[7, 8])
    config = TrainingConfig(test_fraction=0.0, validation_fraction=0.0)
    with pytest.raises(DataError) as error:
        load_splits(config, train_data=train, validation_data=validation)
    assert str(error.value).startswith(
        "DataFrame validation_data: 1 validation label in column 'label' never occur in the "
        "training data (DataFrame train_data): 'politics' (1 row: index 7)."
    )


def test_duplicate_texts_across_splits_warn(caplog):
    train = pd.DataFrame({"text": [f"text {i}" for i in range(20)], "label": ["a", "b"] * 10})
    test = pd.DataFrame({"text": ["text 1", "text 2", "new", "text 3"], "label": ["b", "a", "a", "b"]})
    config = TrainingConfig(validation_fraction=0.0, test_fraction=0.0)
    with caplog.at_level(logging.WARNING, logger="tfpeft.data"):
        splits = load_splits(config, train_data=train, test_data=test)
    assert len(splits["test"]) == 4
    assert "3 of 4 test examples (DataFrame test_data) have a text that also occurs in the training data" in caplog.text


def test_two_sources_of_test_data_rejected(tmp_path):
    config = TrainingConfig(test_file=str(tmp_path / "test.csv"))
    with pytest.raises(ConfigError, match="Both test_data and test_file are set"):
        load_splits(config, train_data=(["a", "b"], ["x", "y"]), test_data=(["a"], ["x"]))


def test_builtin_dataset_rejects_text_pairs():
    with pytest.raises(ConfigError, match="built-in dataset 'bbc_news' has single texts"):
        load_splits(TrainingConfig(dataset="bbc_news", text_pair_column="title"))


def test_balanced_weights_equal_sklearn():
    label_ids = [0] * 30 + [1] * 6 + [2] * 12
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(label_ids))
    weights = balanced_class_weights(label_ids, 3)
    np.testing.assert_allclose([weights[i] for i in range(3)], expected)
    assert class_counts(label_ids, 4) == [30, 6, 12, 0]


@pytest.fixture(scope="module")
def imbalanced_runs(tiny_bert_dir, tmp_path_factory):
    """Two one-epoch runs on the same imbalanced data, without and with balanced weights."""
    texts = [f"goal match {i}" for i in range(40)] + [f"chip phone {i}" for i in range(8)]
    frame = pd.DataFrame({"text": texts, "label": ["sport"] * 40 + ["tech"] * 8})
    results = {}
    for class_weight in ("none", "balanced"):
        output_dir = str(tmp_path_factory.mktemp("weights") / class_weight)
        results[class_weight] = tfpeft.train(
            train_data=frame, model_name_or_path=tiny_bert_dir, output_dir=output_dir,
            class_weight=class_weight, num_train_epochs=1, max_seq_length=8, policy="full",
            validation_fraction=0.0, test_fraction=0.0, eval_strategy="no", save_strategy="no",
            learning_rate=1e-3, verbose=0,
        ).results
    return results


def test_balanced_class_weight_reaches_fit(imbalanced_runs):
    plain, balanced = imbalanced_runs["none"], imbalanced_runs["balanced"]
    assert plain["class_counts"] == balanced["class_counts"] == {"sport": 40, "tech": 8}
    assert plain["class_weight"] is None
    assert balanced["class_weight"] == pytest.approx({"sport": 48 / 80, "tech": 48 / 16})
    # Same seed and data: only the weights differ, so the epoch losses must too.
    assert plain["history"]["loss"][0] != pytest.approx(balanced["history"]["loss"][0], rel=1e-3)
