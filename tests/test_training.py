import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

import tfpeft
from tfpeft.errors import OutputDirError
from tfpeft.training import WarmupDecaySchedule


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, toy_csv, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("runs") / "toy")
    result = tfpeft.train(
        model_name_or_path=tiny_bert_dir,
        train_file=toy_csv,
        output_dir=output_dir,
        policy="last_n:1",
        num_train_epochs=3,
        learning_rate=1e-3,
        per_device_train_batch_size=8,
        max_seq_length=16,
        verbose=0,
    )
    return result


def read_predictions(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_run_folder_layout(trained):
    entries = set(os.listdir(trained.output_dir))
    assert {"config.toml", "label_map.json", "tokenizer", "model", "results.json", "predictions.csv", "logs"} <= entries
    assert os.path.isfile(os.path.join(trained.output_dir, "model", "config.json"))
    assert os.path.isfile(os.path.join(trained.output_dir, "model", "weights.index"))
    assert json.load(open(os.path.join(trained.output_dir, "label_map.json"))) == ["politics", "sport", "tech"]


def test_results_metrics_equal_sklearn_on_predictions(trained):
    results = json.load(open(os.path.join(trained.output_dir, "results.json")))
    rows = read_predictions(os.path.join(trained.output_dir, "predictions.csv"))
    y_true = [row["label"] for row in rows]
    y_pred = [row["predicted_label"] for row in rows]
    assert len(rows) == results["test"]["num_examples"] == 6
    test = results["test"]
    assert test["accuracy"] == accuracy_score(y_true, y_pred)
    assert test["macro_f1"] == f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert test["macro_precision"] == precision_score(y_true, y_pred, average="macro", zero_division=0)
    assert test["macro_recall"] == recall_score(y_true, y_pred, average="macro", zero_division=0)
    assert set(test["per_class"]) == {"politics", "sport", "tech"}
    assert sum(row["support"] for row in test["per_class"].values()) == 6


def test_results_fields(trained):
    results = trained.results
    assert results["policy"] == "last_n:1"
    assert results["trainable_params"] == 2224 + 51
    assert results["total_params"] == 7459
    assert results["epochs_completed"] == 3
    assert results["train_seconds"] > 0
    assert set(results["versions"]) == {"tfpeft", "tensorflow", "tf_keras", "transformers"}
    assert results["versions"]["transformers"] == "4.54.1"
    assert len(results["train_data_sha256"]) == 64
    assert results["num_examples"] == {"train": 48, "validation": 6, "test": 6}


def test_best_epoch_weights_are_kept(trained):
    history = trained.results["history"]
    best = int(np.argmax(history["val_macro_f1"]))
    assert trained.results["best_epoch"] == best + 1
    assert trained.results["validation"]["macro_f1"] == history["val_macro_f1"][best]


def test_tensorboard_events_written(trained):
    logs = os.path.join(trained.output_dir, "logs")
    files = [name for _, _, names in os.walk(logs) for name in names]
    assert any(name.startswith("events.out.tfevents") for name in files)


def test_load_in_new_process_predicts_same(trained):
    texts = ["goal match team", "chip phone software", "vote party election", "the of and"]
    expected = trained.classifier.predict(texts)
    code = (
        "import json, sys, tfpeft\n"
        f"classifier = tfpeft.load({trained.output_dir!r})\n"
        f"print(json.dumps(classifier.predict({texts!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


def test_loaded_logits_equal_trained(trained):
    texts = ["goal match team", "chip phone software", ""]
    loaded = tfpeft.load(trained.output_dir)
    np.testing.assert_allclose(loaded.predict_logits(texts), trained.classifier.predict_logits(texts), atol=1e-6)
    assert loaded.policy.name == "last_n:1"
    assert len(loaded.model.trainable_variables) == len(trained.classifier.model.trainable_variables)


def test_non_empty_output_dir_refused(trained, tiny_bert_dir, toy_csv):
    before = sorted(os.listdir(trained.output_dir))
    with pytest.raises(OutputDirError, match=r"is not empty .*--overwrite-output-dir"):
        tfpeft.train(model_name_or_path=tiny_bert_dir, train_file=toy_csv, output_dir=trained.output_dir, verbose=0)
    assert sorted(os.listdir(trained.output_dir)) == before


def test_unwritable_output_dir_fails_early(tmp_path, toy_csv):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    # The error comes before the backbone loads: the model folder does not even exist.
    with pytest.raises(OutputDirError, match=r"cannot be created: .*a_file' is a file"):
        tfpeft.train(model_name_or_path=str(tmp_path / "no_model"), train_file=toy_csv, output_dir=str(blocker / "run"), verbose=0)
    assert blocker.read_text() == "mine"
    if not os.path.isdir("/proc"):
        return
    with pytest.raises(OutputDirError, match=r"output_dir '/proc/run' cannot be written: creating a folder in '/proc' failed"):
        tfpeft.train(model_name_or_path=str(tmp_path / "no_model"), train_file=toy_csv, output_dir="/proc/run", verbose=0)


def test_overwrite_refuses_folder_that_is_not_a_run(tmp_path, tiny_bert_dir, toy_csv):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not a tfpeft run folder"):
        tfpeft.train(
            model_name_or_path=tiny_bert_dir, train_file=toy_csv, output_dir=str(tmp_path),
            overwrite_output_dir=True, verbose=0,
        )
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_evaluate_writes_eval_folder(trained, toy_csv):
    results_before = open(os.path.join(trained.output_dir, "results.json")).read()
    metrics = tfpeft.evaluate(trained.output_dir, test_file=toy_csv, verbose=0)
    out_dir = os.path.join(trained.output_dir, "eval", "toy")
    rows = read_predictions(os.path.join(out_dir, "predictions.csv"))
    assert len(rows) == 60 == metrics["num_examples"]
    assert metrics["accuracy"] == accuracy_score([r["label"] for r in rows], [r["predicted_label"] for r in rows])
    assert json.load(open(os.path.join(out_dir, "results.json")))["macro_f1"] == metrics["macro_f1"]
    assert open(os.path.join(trained.output_dir, "results.json")).read() == results_before
    with pytest.raises(OutputDirError, match="already contains an evaluation"):
        tfpeft.evaluate(trained.output_dir, test_file=toy_csv, verbose=0)


def test_schedule_linear_warmup_and_decay():
    schedule = WarmupDecaySchedule(1.0, total_steps=10, warmup_steps=2, decay="linear")
    values = [float(schedule(step)) for step in range(11)]
    np.testing.assert_allclose(values[:3], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(values[6], 0.5)
    np.testing.assert_allclose(values[10], 0.0)
    no_warmup = WarmupDecaySchedule(2.0, total_steps=4, decay="cosine")
    np.testing.assert_allclose([float(no_warmup(s)) for s in (0, 2, 4)], [2.0, 1.0, 0.0], atol=1e-6)
    assert float(WarmupDecaySchedule(3.0, 4, decay="constant")(3)) == 3.0


def copy_run(trained, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained.output_dir, copy)
    return copy


def test_overwrite_keeps_files_it_did_not_write(trained, tmp_path, tiny_bert_dir, toy_csv):
    run = copy_run(trained, tmp_path)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"contains files that tfpeft did not write \(notes\.txt\)"):
        tfpeft.train(
            model_name_or_path=tiny_bert_dir, train_file=toy_csv, output_dir=str(run),
            overwrite_output_dir=True, verbose=0,
        )
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / "results.json").exists()


def test_failed_overwrite_keeps_earlier_run(trained, tmp_path, tiny_bert_dir, toy_csv, monkeypatch):
    import tf_keras

    run = copy_run(trained, tmp_path)
    results = (run / "results.json").read_text()
    settings = dict(
        model_name_or_path=tiny_bert_dir, train_file=toy_csv, output_dir=str(run), overwrite_output_dir=True,
        num_train_epochs=1, max_seq_length=16, verbose=0,
    )

    def interrupted_fit(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tf_keras.Model, "fit", interrupted_fit)
        with pytest.raises(KeyboardInterrupt):
            tfpeft.train(**settings)
    assert (run / ".replaced-run" / "results.json").read_text() == results

    tfpeft.train(**settings)
    assert not (run / ".replaced-run").exists()
    assert json.loads((run / "results.json").read_text())["epochs_completed"] == 1


def test_evaluate_name_stays_inside_eval(trained, toy_csv):
    from tfpeft.errors import ConfigError

    for name in ("..", "../escaped", "/tmp/elsewhere", ""):
        with pytest.raises(ConfigError, match="Invalid --name"):
            tfpeft.evaluate(trained.output_dir, test_file=toy_csv, name=name, overwrite=True, verbose=0)
    assert not os.path.exists(os.path.join(os.path.dirname(trained.output_dir), "escaped"))


def test_max_seq_length_over_position_limit(tmp_path, tiny_bert_dir, toy_csv):
    from tfpeft.errors import ConfigError

    # The tiny BERT has 64 position embeddings.
    with pytest.raises(ConfigError, match=r"max_seq_length=100 is more than this bert backbone's 64 positions"):
        tfpeft.train(
            model_name_or_path=tiny_bert_dir, train_file=toy_csv, output_dir=str(tmp_path / "run"),
            max_seq_length=100, verbose=0,
        )
    assert not (tmp_path / "run").exists()
