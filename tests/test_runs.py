"""Loading run folders: damaged folders and bad prediction arguments."""

import json
import os
import shutil

import pytest

import tfpeft
from tfpeft.cli import main
from tfpeft.errors import ConfigError, RunFolderError


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


def _remove_weights(run):
    for name in os.listdir(run / "model"):
        if name.startswith("weights."):
            os.remove(run / "model" / name)


def _empty_tokenizer(run):
    shutil.rmtree(run / "tokenizer")
    (run / "tokenizer").mkdir()


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_remove_weights, "model/weights.index: the weights file is missing."),
        (lambda run: (run / "label_map.json").write_text('["politics", "sport"'),
         "label_map.json: it cannot be read as JSON (Expecting ',' delimiter: line 1 column 21 (char 20))."),
        (lambda run: (run / "label_map.json").write_text('["politics", "sport"]'),
         "label_map.json: it lists 2 classes but the trained head has 3."),
        (_empty_tokenizer, "tokenizer: it has none of the tokenizer files tokenizer.json, vocab.txt, "
                           "vocab.json, sentencepiece.bpe.model, spiece.model, tokenizer.model."),
    ],
    ids=["weights_deleted", "label_map_garbled", "label_map_short", "tokenizer_emptied"],
)
def test_damaged_run_folder_names_file(run_dir, tmp_path, damage, expected, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    damage(run)
    with pytest.raises(RunFolderError) as error:
        tfpeft.load(str(run))
    assert str(error.value) == (
        f"The run folder '{run}' is damaged: {expected} Train the run again, or restore the "
        "folder from a copy."
    )
    assert main(["predict", str(run), "--text", "goal"]) == 1
    assert capsys.readouterr().err == f"tfpeft predict: error: {error.value}\n"


def test_weights_of_other_shape_are_damage(run_dir, tiny_bert_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    # The head and the label map agree on 2 classes, but the weights hold a 3-class head.
    (run / "label_map.json").write_text('["politics", "sport"]')
    settings = json.loads((run / "model" / "classifier.json").read_text())
    (run / "model" / "classifier.json").write_text(json.dumps({**settings, "num_labels": 2}))
    with pytest.raises(RunFolderError, match=r"is damaged: model: its weights do not fit the model \("):
        tfpeft.load(str(run))
