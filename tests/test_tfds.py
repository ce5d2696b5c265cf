"""TFDS datasets: the offline BBC News builder, feature selection, splits and unlabelled splits."""

import collections
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfpeft.cli import main
from tfpeft.config import TrainingConfig
from tfpeft.data import load_builtin
from tfpeft.data.loading import load_splits
from tfpeft.data.tfds_bbc_news import TOPICS, BbcNews
from tfpeft.errors import DataError


class ToyPairs(tfds.core.GeneratorBasedBuilder):
    """Sentence pairs with a GLUE-like test split whose labels are hidden (-1)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "sentence1": tfds.features.Text(),
                    "sentence2": tfds.features.Text(),
                    "label": tfds.features.ClassLabel(names=["different", "same"]),
                    "idx": tfds.features.Tensor(shape=(), dtype=np.int32),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(40, labelled=True),
            "validation": self._generate_examples(10, labelled=True),
            "test": self._generate_examples(6, labelled=False),
        }

    def _generate_examples(self, num_examples, labelled):
        topics = ["goal match team", "chip phone robot"]
        for i in range(num_examples):
            same = i % 2 == 0
            label = "same" if same else "different"
            if not labelled:
                label = -1
            yield i, {
                "sentence1": topics[i % 2],
                "sentence2": topics[i % 2] if same else topics[(i + 1) % 2],
                "label": label,
                "idx": i,
            }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tfds"))
    BbcNews(data_dir=folder).download_and_prepare()
    ToyPairs(data_dir=folder).download_and_prepare()
    return folder


def test_bbc_builder_holds_the_builtin_articles(data_dir):
    dataset, info = tfds.load("bbc_news", split="train", data_dir=data_dir, download=False, with_info=True)
    assert sorted(info.features.keys()) == ["article", "topic"]
    assert info.features["topic"].names == TOPICS
    loaded = collections.Counter(
        (example["article"].decode("utf-8"), TOPICS[example["topic"]]) for example in tfds.as_numpy(dataset)
    )
    builtin = load_builtin("bbc_news")
    # The built-in loader strips texts; TFDS keeps them as the files hold them.
    assert collections.Counter((text.strip(), label) for text, label in loaded.elements()) == collections.Counter(
        zip(builtin.texts, builtin.labels)
    )


def test_train_one_epoch_on_tfds_bbc_news(data_dir, tiny_bert_dir, tmp_path):
    output_dir = tmp_path / "run"
    status = main([
        "train", "--dataset", "tfds:bbc_news", "--tfds-data-dir", data_dir,
        "--text-column", "article", "--label-column", "topic", "--model", tiny_bert_dir,
        "--num-train-epochs", "1", "--max-seq-length", "32", "--max-train-samples", "160",
        "--max-eval-samples", "40", "--output-dir", str(output_dir), "--quiet",
    ])
    assert status == 0
    results = json.loads((output_dir / "results.json").read_text())
    assert results["epochs_completed"] == 1
    assert results["num_examples"] == {"train": 160, "validation": 40, "test": 40}
    assert json.loads((output_dir / "label_map.json").read_text()) == TOPICS
    # BBC articles average about 380 words, so nearly all are cut at 32 tokens.
    assert results["sequence_lengths"]["train"]["num_truncated"] >= 150
    assert 'dataset = "tfds:bbc_news"' in (output_dir / "config.toml").read_text()


def pair_config(data_dir, **changes):
    settings = dict(
        dataset="tfds:toy_pairs", tfds_data_dir=data_dir, text_column="sentence1",
        text_pair_column="sentence2", tfds_validation_split="validation", tfds_test_split="validation",
    )
    return TrainingConfig(**{**settings, **changes})


def test_tfds_pairs_and_class_names(data_dir):
    splits = load_splits(pair_config(data_dir))
    train = splits["train"]
    assert len(train) == 40
    assert len(splits["validation"]) == 10
    assert set(train.texts) == {"goal match team", "chip phone robot"}
    assert collections.Counter(train.labels) == {"same": 20, "different": 20}
    for text, pair, label in zip(train.texts, train.text_pairs, train.labels):
        assert label == ("same" if text == pair else "different")
    assert train.source == "tfds:toy_pairs split 'train'"


def test_tfds_unlabelled_test_split_fails_before_run_folder(data_dir, capsys, tmp_path):
    output_dir = tmp_path / "run"
    status = main([
        "train", "--dataset", "tfds:toy_pairs", "--tfds-data-dir", data_dir, "--text-column", "sentence1",
        "--text-pair-column", "sentence2", "--tfds-test-split", "test", "--output-dir", str(output_dir), "--quiet",
    ])
    error = capsys.readouterr().err
    assert status == 1
    assert (
        "tfds:toy_pairs split 'test': 6 of 6 examples have no label in feature 'label': TFDS marks "
        "a missing label as -1 (example 0, example 1, example 2, example 3, example 4 and 1 more)"
    ) in error
    assert "Use the validation split in its place (--tfds-test-split validation)" in error
    assert not output_dir.exists()


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"text_column": "sentense1"}, r"split 'train' has no text feature 'sentense1'\. Did you mean 'sentence1'\? "
                                       r"Its features are: .*Choose one with --text-column"),
        ({"label_column": "idx"}, None),
        ({"text_column": "idx"}, r"feature 'idx' is Tensor of int32 with shape \(\), not one text per example"),
        ({"tfds_validation_split": "valid"}, r"tfds:toy_pairs has no split 'valid' .*Its splits are: "),
        ({"dataset": "tfds:toy_pair"}, r"Unknown TFDS dataset 'toy_pair'\. Did you mean 'tfds:toy_pairs'\?"),
        ({"tfds_data_dir": "EMPTY"}, r"The TFDS dataset 'toy_pairs' is not prepared in '.*'\. Pass --tfds-download"),
    ],
)
def test_tfds_errors_name_feature_split_and_fix(data_dir, tmp_path, changes, pattern):
    if changes.get("tfds_data_dir") == "EMPTY":
        changes["tfds_data_dir"] = str(tmp_path / "empty")
    config = pair_config(data_dir, **changes)
    if pattern is None:
        # An integer feature is a valid label: its values stay ints.
        assert set(load_splits(config.replace(tfds_test_split=None, test_fraction=0.0))["train"].labels) <= set(range(40))
        return
    with pytest.raises(DataError, match=pattern):
        load_splits(config)
    assert not os.path.exists(tmp_path / "empty" / "toy_pairs")
