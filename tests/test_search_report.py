"""The search report, written from trials.csv files made by hand; nothing is trained."""

import csv
import os

import pytest
from PIL import Image

import tfpeft
from tfpeft.errors import ConfigError, RunFolderError
from tfpeft.reports.search_report import plot_file_name, read_trials, use_log_scale

HEADER = ["trial_id", "learning_rate", "num_train_epochs", "policy", "tuner/epochs",
          "objective", "epochs", "seconds", "status", "error"]
TRIALS = [
    ["00", "1e-05", "2", "head", "2", "0.61", "2", "12.5", "COMPLETED", ""],
    ["01", "0.0003", "3", "last_n:2", "3", "0.93", "3", "30.25", "COMPLETED", ""],
    ["02", "0.001", "2", "full", "2", "", "1", "4.0", "FAILED", "ResourceExhaustedError: OOM | batch 16"],
    ["03", "5e-05", "1", "last_n:2", "1", "0.78", "1", "8", "COMPLETED", ""],
    ["04", "0.0001", "3", "head", "3", "0.70", "3", "29.5", "COMPLETED", ""],
]


def write_trials(folder, header=HEADER, rows=TRIALS):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "trials.csv"), "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return folder


def assert_valid_picture(path):
    with Image.open(path) as image:
        assert image.format == "PNG", path
        width, height = image.size
        assert width >= 400, (path, image.size)
        assert height >= 300, (path, image.size)
        colors = image.convert("RGB").getcolors(maxcolors=width * height)
    assert len(colors) > 2, path


def table_rows(report):
    return [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| ---")]


def test_search_report_files(tmp_path):
    folder = write_trials(str(tmp_path / "tuning"))
    written = tfpeft.write_search_report(folder, objective_name="val_macro_f1")
    # Hyperband's tuner/epochs is bookkeeping, not a searched hyperparameter, so it gets no plot.
    assert sorted(written) == [
        "objective_vs_learning_rate.png",
        "objective_vs_num_train_epochs.png",
        "objective_vs_policy.png",
        "report.md",
    ]
    for name, path in written.items():
        assert os.path.dirname(path) == folder
        if name.endswith(".png"):
            assert_valid_picture(path)


def test_search_report_table_best_first(tmp_path):
    folder = write_trials(str(tmp_path / "tuning"))
    report = open(tfpeft.write_search_report(folder, objective_name="val_macro_f1")["report.md"]).read()
    rows = table_rows(report)
    assert rows[0] == (
        "| trial | learning_rate | num_train_epochs | policy | tuner/epochs | val_macro_f1 | epochs | seconds | status | error |"
    )
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| 01", "| 03", "| 04", "| 00", "| 02"]
    assert rows[1] == "| 01 | 0.0003 | 3 | last_n:2 | 3 | 0.9300 | 3 | 30.2 | COMPLETED |  |"
    assert rows[5] == "| 02 | 0.001 | 2 | full | 2 | - | 1 | 4.0 | FAILED | ResourceExhaustedError: OOM \\| batch 16 |"
    assert "5 trials (4 COMPLETED, 1 FAILED)" in report
    assert "Best trial: 01, val_macro_f1 0.9300, with learning_rate=0.0003, num_train_epochs=3, policy=last_n:2" in report
    assert "![val_macro_f1 against learning_rate](objective_vs_learning_rate.png)" in report


def test_search_report_min_direction(tmp_path):
    folder = write_trials(str(tmp_path / "tuning"))
    report = open(tfpeft.write_search_report(folder, objective_name="val_loss", direction="min")["report.md"]).read()
    assert [row.split(" | ")[0] for row in table_rows(report)[1:]] == ["| 00", "| 04", "| 03", "| 01", "| 02"]
    assert "Best trial: 00, val_loss 0.6100" in report
    assert "lower is better" in report


def test_search_report_without_finished_trials(tmp_path):
    rows = [["00", "1e-05", "2", "head", "2", "", "0", "1.0", "FAILED", "boom"]]
    folder = write_trials(str(tmp_path / "tuning"), rows=rows)
    written = tfpeft.write_search_report(folder)
    assert list(written) == ["report.md"]
    assert "No trial has an objective yet" in open(written["report.md"]).read()


def test_trials_objective_parsing(tmp_path):
    trials = read_trials(os.path.join(write_trials(str(tmp_path / "tuning")), "trials.csv"))
    assert trials.hyperparameters == ["learning_rate", "num_train_epochs", "policy", "tuner/epochs"]
    assert [row["objective"] for row in trials.rows] == [0.61, 0.93, None, 0.78, 0.70]
    assert [row["trial_id"] for row in trials.finished] == ["00", "01", "03", "04"]


def test_log_scale_rule():
    assert use_log_scale("learning_rate", [1e-5, 3e-5])
    assert use_log_scale("weight_decay", [1e-4, 0.01, 0.1])
    assert not use_log_scale("weight_decay", [0.0, 0.01])
    assert not use_log_scale("num_train_epochs", [1.0, 2.0, 300.0])
    assert not use_log_scale("warmup_ratio", [0.05, 0.1])
    assert plot_file_name("tuner/epochs") == "objective_vs_tuner_epochs.png"


def test_bad_objective_names_line(tmp_path):
    rows = [TRIALS[0], ["01", "1e-4", "2", "head", "2", "n/a", "2", "3", "COMPLETED", ""]]
    folder = write_trials(str(tmp_path / "tuning"), rows=rows)
    with pytest.raises(RunFolderError, match=r"line 3 \(trial '01'\): objective 'n/a' is not a number"):
        tfpeft.write_search_report(folder)


def test_missing_columns_and_file(tmp_path):
    folder = write_trials(str(tmp_path / "tuning"), header=["trial_id", "learning_rate", "objective"], rows=[["0", "1", "2"]])
    with pytest.raises(RunFolderError, match="lacks the column"):
        tfpeft.write_search_report(folder)
    with pytest.raises(RunFolderError, match="trials.csv' not found"):
        tfpeft.write_search_report(str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match="direction='up'"):
        tfpeft.write_search_report(folder, direction="up")
