"""Loading run folders: damaged folders and bad prediction arguments."""

import pytest

import tfpeft
from tfpeft.errors import ConfigError


@pytest.fixture(scope="module")
def run_dir(tiny_bert_dir, toy_csv, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("runs") / "run")
    tfpeft.train(
        model_name_or_path=tiny_bert_dir, train_file=toy_csv, output_dir=output_dir, num_train_epochs=1,
        max_seq_length=16, policy="head", verbose=0,
    )
    return output_dir


@pytest.fixture(scope="module")
def classifier(run_dir):
    return tfpeft.load(run_dir)


def test_predict_batch_size_zero_rejected(classifier):
    with pytest.raises(ConfigError, match=r"Invalid batch_size=0 \(--batch-size\): use 1 or more"):
        classifier.predict(["goal"], batch_size=0)
    assert classifier.predict(["goal", "vote", "chip"], batch_size=1) == classifier.predict(["goal", "vote", "chip"])
