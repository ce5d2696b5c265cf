"""Run reports, evaluation reports and `tfpeft compare`, on three tiny runs trained once."""

import contextlib
import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import tfpeft
from tfpeft.cli import main
from tfpeft.errors import RunFolderError
from tfpeft.reports.predictions import confusion_counts, read_predictions

# policy -> epochs. Different policies give different parameter counts to compare.
RUN_SETTINGS = {"head": 1, "last_n:1": 2, "full": 1}
CLASSES = ["politics", "sport", "tech"]


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, toy_csv, tmp_path_factory):
    """Train one tiny run per policy; the last_n:1 run prints its progress into ``output``."""
    base = tmp_path_factory.mktemp("report_runs")
    trained = {}
    for policy, num_epochs in RUN_SETTINGS.items():
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            result = tfpeft.train(
                model_name_or_path=tiny_bert_dir,
                train_file=toy_csv,
                output_dir=str(base / policy.replace(":", "_")),
                policy=policy,
                num_train_epochs=num_epochs,
                learning_rate=1e-3,
                per_device_train_batch_size=8,
                max_seq_length=16,
                verbose=1 if policy == "last_n:1" else 0,
            )
        trained[policy] = {"dir": result.output_dir, "results": result.results, "output": output.getvalue()}
    return trained


@pytest.fixture(scope="module")
def eval_dir(runs, toy_csv):
    tfpeft.evaluate(runs["last_n:1"]["dir"], test_file=toy_csv, verbose=0)
    return os.path.join(runs["last_n:1"]["dir"], "eval", "toy")


def assert_valid_picture(path):
    with Image.open(path) as image:
        assert image.format == "PNG", path
        width, height = image.size
        assert width >= 400, (path, image.size)
        assert height >= 300, (path, image.size)
        colors = image.convert("RGB").getcolors(maxcolors=width * height)
    assert len(colors) > 2, path


def read_csv_rows(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_run_folder_gets_report_files(runs):
    for run in runs.values():
        entries = set(os.listdir(run["dir"]))
        assert {"training_curves.png", "confusion_matrix.png", "errors.csv", "report.md"} <= entries


def test_run_pictures_are_valid_images(runs):
    for run in runs.values():
        assert_valid_picture(os.path.join(run["dir"], "training_curves.png"))
        assert_valid_picture(os.path.join(run["dir"], "confusion_matrix.png"))


def test_predictions_accuracy_equals_results(runs):
    for run in runs.values():
        test = run["results"]["test"]
        rows = read_csv_rows(os.path.join(run["dir"], "predictions.csv"))
        assert len(rows) == test["num_examples"] == run["results"]["num_examples"]["test"] == 6
        correct = sum(row["label"] == row["predicted_label"] for row in rows)
        assert correct / len(rows) == test["accuracy"]
        for row in rows:
            probabilities = {name: float(row[f"prob_{name}"]) for name in CLASSES}
            assert abs(sum(probabilities.values()) - 1.0) < 1e-5
            assert row["predicted_label"] == max(probabilities, key=probabilities.get)


def test_errors_csv_lists_mistakes_most_confident_first(runs):
    for run in runs.values():
        predictions = read_csv_rows(os.path.join(run["dir"], "predictions.csv"))
        mistakes = [row for row in predictions if row["label"] != row["predicted_label"]]
        errors = read_csv_rows(os.path.join(run["dir"], "errors.csv"))
        assert len(errors) == len(mistakes)
        for error in errors:
            source = predictions[int(error["row"])]
            assert error["text"] == source["text"]
            assert error["label"] == source["label"] != error["predicted_label"] == source["predicted_label"]
            assert float(error["predicted_probability"]) == float(source[f"prob_{source['predicted_label']}"])
            assert float(error["label_probability"]) == float(source[f"prob_{source['label']}"])
        confidences = [float(error["predicted_probability"]) for error in errors]
        assert confidences == sorted(confidences, reverse=True)


def test_confusion_counts_match_predictions(runs):
    run = runs["full"]
    predictions = read_predictions(os.path.join(run["dir"], "predictions.csv"))
    counts = confusion_counts(predictions)
    assert predictions.class_names == CLASSES
    assert counts.sum() == 6
    assert counts.trace() / 6 == run["results"]["test"]["accuracy"]
    for i, name in enumerate(CLASSES):
        assert counts[i].sum() == run["results"]["test"]["per_class"][name]["support"]


def test_report_md_puts_tables_and_pictures_together(runs):
    run = runs["last_n:1"]
    results = run["results"]
    report = open(os.path.join(run["dir"], "report.md"), encoding="utf-8").read()
    assert report.startswith("# Run report: last_n_1\n")
    assert f"| accuracy | {results['test']['accuracy']:.4f} | {results['validation']['accuracy']:.4f} |" in report
    assert f"| macro F1 | {results['test']['macro_f1']:.4f} |" in report
    for name, row in results["test"]["per_class"].items():
        assert f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |" in report
    assert "| block_1 | 2,224 | 2,224 | 100.00% |" in report
    assert f"| **total** | {results['trainable_params']:,} | {results['total_params']:,} |" in report
    assert "![Confusion matrix: counts and row-normalised](confusion_matrix.png)" in report
    assert "![Loss and metrics per epoch](training_curves.png)" in report
    assert "Trained 2 of 2 epochs" in report


def test_evaluation_folder_gets_report(eval_dir, runs):
    entries = set(os.listdir(eval_dir))
    assert {"confusion_matrix.png", "errors.csv", "report.md", "predictions.csv"} <= entries
    assert "training_curves.png" not in entries
    assert_valid_picture(os.path.join(eval_dir, "confusion_matrix.png"))

    metrics = json.load(open(os.path.join(eval_dir, "results.json")))
    rows = read_csv_rows(os.path.join(eval_dir, "predictions.csv"))
    assert len(rows) == metrics["num_examples"] == 60
    assert sum(row["label"] == row["predicted_label"] for row in rows) / 60 == metrics["accuracy"]
    report = open(os.path.join(eval_dir, "report.md"), encoding="utf-8").read()
    assert report.startswith("# Evaluation report: toy\n")
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in report
    # The parameter report comes from the run that was evaluated.
    assert f"| **total** | {runs['last_n:1']['results']['trainable_params']:,} |" in report


def test_training_prints_progress_with_remaining_time(runs):
    output = runs["last_n:1"]["output"]
    assert "Tokenizing: 60/60 texts (100%); done in" in output
    epoch_lines = [line for line in output.splitlines() if "] Epoch " in line]
    assert len(epoch_lines) == 2
    assert "Epoch 1/2: loss " in epoch_lines[0]
    assert "val_macro_f1 " in epoch_lines[0]
    assert "elapsed, about " in epoch_lines[0]
    assert epoch_lines[0].endswith(" left")
    assert "Epoch 2/2: loss " in epoch_lines[1]
    assert "; done in " in epoch_lines[1]
    assert "Predicting the test split: 1/1 batches (100%)" in output
    # Keras prints no bar of its own next to these lines.
    assert "ETA" not in output
    assert "/step" not in output


def test_quiet_training_prints_nothing(runs):
    assert runs["head"]["output"] == ""
    assert runs["full"]["output"] == ""


def parse_table(text):
    lines = [line for line in text.splitlines() if line and not line.startswith("[")]
    return [line.split() for line in lines]


def test_compare_numbers_equal_results(runs, tmp_path, capsys):
    run_dirs = [run["dir"] for run in runs.values()]
    assert main(["compare", *run_dirs, "--output-dir", str(tmp_path)]) == 0
    table = parse_table(capsys.readouterr().out)
    assert table[0] == ["run", "policy", "trainable", "trainable", "%", "accuracy", "macro", "F1", "train", "s", "epochs"]

    rows = read_csv_rows(tmp_path / "comparison.csv")
    assert [row["run"] for row in rows] == [os.path.normpath(path) for path in run_dirs]
    for run, row, printed in zip(runs.values(), rows, table[1:]):
        results = run["results"]
        assert row["policy"] == results["policy"]
        assert int(row["trainable_params"]) == results["trainable_params"]
        assert int(row["total_params"]) == results["total_params"]
        assert float(row["trainable_percent"]) == results["trainable_percent"]
        assert float(row["accuracy"]) == results["test"]["accuracy"]
        assert float(row["macro_f1"]) == results["test"]["macro_f1"]
        assert float(row["train_seconds"]) == results["train_seconds"]
        assert int(row["epochs_completed"]) == results["epochs_completed"]
        assert int(row["best_epoch"]) == results["best_epoch"]
        assert printed == [
            os.path.normpath(run["dir"]),
            results["policy"],
            f"{results['trainable_params']:,}",
            f"{results['trainable_percent']:.2f}",
            f"{results['test']['accuracy']:.4f}",
            f"{results['test']['macro_f1']:.4f}",
            f"{results['train_seconds']:.1f}",
            str(results["epochs_completed"]),
        ]
    assert_valid_picture(tmp_path / "comparison.png")


def test_compare_counts_differ_by_policy(runs):
    counts = {policy: run["results"]["trainable_params"] for policy, run in runs.items()}
    assert counts == {"head": 51, "last_n:1": 2224 + 51, "full": 7459 - 272}


def test_compare_keeps_existing_files(runs, tmp_path, capsys):
    run_dirs = [run["dir"] for run in runs.values()]
    (tmp_path / "comparison.csv").write_text("mine\n")
    assert main(["compare", *run_dirs, "--output-dir", str(tmp_path), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert "comparison.csv" in error
    assert "--overwrite" in error
    assert (tmp_path / "comparison.csv").read_text() == "mine\n"
    assert not (tmp_path / "comparison.png").exists()

    assert main(["compare", *run_dirs, "--output-dir", str(tmp_path), "--overwrite", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert len(read_csv_rows(tmp_path / "comparison.csv")) == 3


def test_compare_rejects_folders_that_are_not_runs(eval_dir, tmp_path):
    with pytest.raises(RunFolderError, match="has no results.json"):
        tfpeft.compare([str(tmp_path)], output_dir=str(tmp_path), verbose=0)
    with pytest.raises(RunFolderError, match="evaluation folder"):
        tfpeft.compare([eval_dir], output_dir=str(tmp_path), verbose=0)
    assert not (tmp_path / "comparison.csv").exists()


# Hand-made predictions: rows of (true label, predicted label, probabilities of a, b, c).
HAND_ROWS = [
    ("a", "a", (0.8, 0.1, 0.1)),
    ("a", "b", (0.3, 0.6, 0.1)),
    ("b", "b", (0.1, 0.8, 0.1)),
    ("c", "a", (0.9, 0.05, 0.05)),
    ("c", "c", (0.2, 0.2, 0.6)),
    ("b", "c", (0.1, 0.4, 0.5)),
    ("a", "b", (0.4, 0.6, 0.0)),
]


def write_evaluation_folder(folder, rows, class_names=("a", "b", "c")):
    """Write a results.json and predictions.csv as `tfpeft evaluate` does, from ``rows``."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "predictions.csv"), "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label", "predicted_label"] + [f"prob_{name}" for name in class_names])
        for i, (label, predicted, probabilities) in enumerate(rows):
            writer.writerow([f"text {i} | with a pipe", label, predicted] + [f"{p:.6f}" for p in probabilities])
    labels = [row[0] for row in rows]
    predicted = [row[1] for row in rows]
    accuracy = sum(t == p for t, p in zip(labels, predicted)) / len(rows)
    per_class = {name: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": labels.count(name)} for name in class_names}
    results = {"accuracy": accuracy, "macro_f1": 0.5, "macro_precision": 0.5, "macro_recall": 0.5,
               "num_examples": len(rows), "per_class": per_class, "loss": 0.7}
    with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as file:
        json.dump(results, file)
    return folder


def test_hand_made_confusion_and_errors(tmp_path):
    folder = write_evaluation_folder(str(tmp_path / "eval"), HAND_ROWS)
    written = tfpeft.write_run_report(folder)
    assert sorted(written) == ["confusion_matrix.png", "errors.csv", "report.md"]

    counts = confusion_counts(read_predictions(os.path.join(folder, "predictions.csv")))
    np.testing.assert_array_equal(counts, [[1, 2, 0], [0, 1, 1], [1, 0, 1]])
    errors = read_csv_rows(os.path.join(folder, "errors.csv"))
    # Highest probability of the predicted class first; the two 0.6 rows keep file order.
    assert [int(error["row"]) for error in errors] == [3, 1, 6, 5]
    assert [error["predicted_probability"] for error in errors] == ["0.9", "0.6", "0.6", "0.5"]
    assert [error["label_probability"] for error in errors] == ["0.05", "0.3", "0.4", "0.4"]

    report = open(written["report.md"], encoding="utf-8").read()
    assert "4 of 7 labelled examples are wrong" in report
    assert "| c | a | 0.900 | text 3 \\| with a pipe |" in report
    assert "Trainable parameters" not in report


def test_errors_csv_keeps_fifty(tmp_path):
    rows = [("a", "b", (0.4 - i / 1000, 0.6 + i / 1000, 0.0)) for i in range(60)]
    folder = write_evaluation_folder(str(tmp_path / "eval"), rows)
    tfpeft.write_run_report(folder)
    errors = read_csv_rows(os.path.join(folder, "errors.csv"))
    assert [int(error["row"]) for error in errors] == list(range(59, 9, -1))


def test_report_of_run_without_test_split(tmp_path):
    # A run trained with eval_strategy='no' and test_fraction=0: history without val_ keys.
    results = {
        "policy": "head", "trainable_params": 51, "total_params": 7510, "trainable_percent": 0.6791,
        "parts": [{"name": "embeddings", "trainable": 0, "total": 7459}, {"name": "head", "trainable": 51, "total": 51}],
        "epochs_completed": 3, "best_epoch": 3, "train_seconds": 1.5,
        "history": {"loss": [1.1, 0.9, 0.7], "accuracy": [0.3, 0.5, 0.8]},
        "validation": None, "test": None, "num_examples": {"train": 60},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    written = tfpeft.write_run_report(str(tmp_path))
    assert sorted(written) == ["report.md", "training_curves.png"]
    assert_valid_picture(written["training_curves.png"])
    report = (tmp_path / "report.md").read_text()
    assert "This run had no test split" in report
    assert "| **total** | 51 | 7,510 | 0.68% |" in report


def test_report_of_folder_without_results(tmp_path):
    with pytest.raises(RunFolderError, match="results.json' not found"):
        tfpeft.write_run_report(str(tmp_path))


def test_bad_predictions_file_is_named(tmp_path):
    folder = write_evaluation_folder(str(tmp_path / "eval"), HAND_ROWS)
    with open(os.path.join(folder, "predictions.csv"), "w", encoding="utf-8") as file:
        file.write("text,label\nhello,a\n")
    with pytest.raises(RunFolderError, match=r"predictions.csv' is not a tfpeft predictions file: missing .*predicted_label"):
        tfpeft.write_run_report(folder)
