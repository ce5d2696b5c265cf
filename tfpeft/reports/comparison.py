"""``tfpeft compare``: one table and one bar chart over several run folders."""

import csv
import json
import os

from tfpeft.errors import ConfigError, OutputDirError, RunFolderError
from tfpeft.progress import Progress
from tfpeft.reports import plots

COMPARISON_CSV = "comparison.csv"
COMPARISON_PNG = "comparison.png"
# The columns of comparison.csv, in order; the printed table shows a subset.
COLUMNS = [
    "run",
    "policy",
    "trainable_params",
    "total_params",
    "trainable_percent",
    "accuracy",
    "macro_f1",
    "train_seconds",
    "epochs_completed",
    "best_epoch",
]


def comparison_row(run_dir):
    """Return the comparison values of one run folder, read from its ``results.json``.

    Test metrics are None for a run without a test split.
    """
    path = os.path.join(run_dir, "results.json")
    try:
        with open(path, encoding="utf-8") as file:
            results = json.load(file)
    except FileNotFoundError:
        raise RunFolderError(
            f"{run_dir!r} has no results.json, so it is not a finished run folder. Pass the "
            "output_dir of a completed `tfpeft train`."
        ) from None
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path!r} is not valid JSON: {error}") from error
    if "policy" not in results or "trainable_params" not in results:
        raise RunFolderError(
            f"{path!r} has no policy or parameter counts; it looks like an evaluation folder "
            "(RUN_DIR/eval/NAME). Pass the run folder itself."
        )

    test = results.get("test") or {}
    return {
        "run": os.path.normpath(run_dir),
        "policy": results["policy"],
        "trainable_params": results["trainable_params"],
        "total_params": results["total_params"],
        "trainable_percent": results["trainable_percent"],
        "accuracy": test.get("accuracy"),
        "macro_f1": test.get("macro_f1"),
        "train_seconds": results.get("train_seconds"),
        "epochs_completed": results.get("epochs_completed"),
        "best_epoch": results.get("best_epoch"),
    }


def chart_names(runs):
    """Return the folder name of each run, or the whole path where two folder names are equal."""
    names = [os.path.basename(run) or run for run in runs]
    return [name if names.count(name) == 1 else run for name, run in zip(names, runs)]


def format_comparison(rows):
    """Return the rows as a text table: run, policy, parameters, test scores, time and epochs."""
    header = ["run", "policy", "trainable", "trainable %", "accuracy", "macro F1", "train s", "epochs"]
    lines = [
        [
            row["run"],
            row["policy"],
            f"{row['trainable_params']:,}",
            f"{row['trainable_percent']:.2f}",
            "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}",
            "-" if row["macro_f1"] is None else f"{row['macro_f1']:.4f}",
            "-" if row["train_seconds"] is None else f"{row['train_seconds']:.1f}",
            "-" if row["epochs_completed"] is None else str(row["epochs_completed"]),
        ]
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header] + lines) for i in range(len(header))]
    # Text columns are left-aligned, numbers right-aligned.
    def format_line(cells):
        return "  ".join(cell.ljust(width) if i < 2 else cell.rjust(width) for i, (cell, width) in enumerate(zip(cells, widths)))

    return "\n".join(format_line(cells) for cells in [header] + lines)


def compare(run_dirs, *, output_dir=".", overwrite=False, verbose=1):
    """Compare run folders: print a table and write ``comparison.csv`` and ``comparison.png``.

    The values come from each run's ``results.json`` unchanged: ``comparison.csv`` contains them
    at full precision, the printed table rounds them. Existing comparison files in
    ``output_dir`` are kept unless ``overwrite`` is set.

    Args:
        run_dirs: list of str. Finished run folders, in the order of the table.
        output_dir: str. Where to write the two files; created when missing.
        overwrite: bool. Replace an earlier ``comparison.csv`` and ``comparison.png`` there.
        verbose: int. 0 prints nothing.

    Returns:
        list of dict, one per run, with the keys of ``COLUMNS``.

    Example:

    >>> rows = tfpeft.compare(["runs/head", "runs/last2", "runs/full"], output_dir="runs")
    >>> [row["accuracy"] for row in rows]
    [0.93..., 0.98..., 0.98...]
    """
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = [os.fspath(run_dir) for run_dir in run_dirs]
    if not run_dirs:
        raise ConfigError("compare needs at least one run folder: pass RUN_DIR [RUN_DIR ...].")
    csv_path = os.path.join(output_dir, COMPARISON_CSV)
    png_path = os.path.join(output_dir, COMPARISON_PNG)
    existing = [path for path in (csv_path, png_path) if os.path.exists(path)]
    if existing and not overwrite:
        raise OutputDirError(
            f"{' and '.join(repr(path) for path in existing)} already exist. Pass --output-dir "
            "with another folder, or --overwrite (overwrite=True) to replace them."
        )

    rows = [comparison_row(run_dir) for run_dir in run_dirs]
    os.makedirs(output_dir or ".", exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            # repr-exact floats (csv writes str(float)), so a reader gets results.json's values back.
            writer.writerow({key: "" if row[key] is None else row[key] for key in COLUMNS})
    plots.plot_comparison(rows, png_path, names=chart_names([row["run"] for row in rows]))

    progress = Progress(verbose)
    progress.block(format_comparison(rows))
    progress.step(f"Wrote {csv_path} and {png_path}")
    return rows
