"""The report of one run or evaluation folder: curves, confusion matrix, mistakes and report.md.

``write_run_report`` reads what training or ``tfpeft evaluate`` already wrote
(``results.json`` and ``predictions.csv``) and adds the files that show it, so a report can be
written again at any time from a finished folder.
"""

import json
import logging
import os
import tomllib

from tfpeft.errors import RunFolderError
from tfpeft.reports import markdown, plots
from tfpeft.reports.predictions import NUM_ERRORS, confusion_counts, most_confident_errors, read_predictions, write_errors
from tfpeft.runs import CONFIG_FILE, PREDICTIONS_FILE, RESULTS_FILE

logger = logging.getLogger("tfpeft.reports")

REPORT_FILE = "report.md"
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion_matrix.png"
ERRORS_FILE = "errors.csv"
# How many of the most confident mistakes report.md shows; errors.csv keeps NUM_ERRORS.
NUM_ERRORS_SHOWN = 5


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        raise RunFolderError(
            f"{path!r} not found. Pass a run folder written by `tfpeft train` or an evaluation "
            "folder written by `tfpeft evaluate` (RUN_DIR/eval/NAME)."
        ) from None
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path!r} is not valid JSON: {error}") from error


def _read_config(folder):
    """Return the run's config.toml as a dict, or an empty dict when it is missing or invalid."""
    path = os.path.join(folder, CONFIG_FILE)
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as error:
        logger.info("No usable %s for the report: %s", path, error)
        return {}


def _find_run_dir(folder):
    """Return the run folder of an evaluation folder ``RUN_DIR/eval/NAME``, or None."""
    parent = os.path.dirname(os.path.abspath(folder))
    run_dir = os.path.dirname(parent)
    if os.path.basename(parent) == "eval" and os.path.isfile(os.path.join(run_dir, RESULTS_FILE)):
        return run_dir
    return None


def write_run_report(folder, *, run_dir=None):
    """Write the pictures, ``errors.csv`` and ``report.md`` of a run or evaluation folder.

    A run folder (``results.json`` with a ``history``) gets ``training_curves.png``. A folder
    with ``predictions.csv`` gets ``confusion_matrix.png`` and ``errors.csv`` (the 50 most
    confident mistakes). ``report.md`` puts the metrics, the per-class metrics, the
    trainable-parameter report and the pictures together. Existing report files in ``folder``
    are replaced; nothing else there is touched.

    Args:
        folder: str. A run folder, or an evaluation folder ``RUN_DIR/eval/NAME``.
        run_dir: str or None. For an evaluation folder, the run it evaluated. Its policy and
            parameter report go into the report. By default it is the folder two levels up,
            when that is a run.

    Returns:
        dict of file name to path, for each file written.

    Example:

    >>> tfpeft.write_run_report("runs/bbc")["report.md"]
    'runs/bbc/report.md'
    """
    results = _read_json(os.path.join(folder, RESULTS_FILE))
    is_training_run = "history" in results
    if is_training_run:
        run_results, config = results, _read_config(folder)
        metrics = results.get("test")
    else:
        run_dir = run_dir or _find_run_dir(folder)
        run_results = _read_json(os.path.join(run_dir, RESULTS_FILE)) if run_dir else None
        config = _read_config(run_dir) if run_dir else {}
        metrics = results

    written = {}
    if is_training_run and results["history"]:
        path = os.path.join(folder, CURVES_FILE)
        plots.plot_training_curves(
            results["history"],
            path,
            best_epoch=results.get("best_epoch"),
            best_metric=config.get("metric_for_best_model"),
        )
        written[CURVES_FILE] = path

    predictions = None
    errors = []
    predictions_path = os.path.join(folder, PREDICTIONS_FILE)
    if os.path.isfile(predictions_path):
        predictions = read_predictions(predictions_path)
    if predictions is not None and predictions.labelled:
        path = os.path.join(folder, CONFUSION_FILE)
        plots.plot_confusion_matrix(confusion_counts(predictions), predictions.class_names, path)
        written[CONFUSION_FILE] = path
        errors = most_confident_errors(predictions)
        path = os.path.join(folder, ERRORS_FILE)
        write_errors(path, errors)
        written[ERRORS_FILE] = path

    text = format_report(folder, results, metrics, run_results, config, predictions, errors, written, run_dir)
    path = os.path.join(folder, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    written[REPORT_FILE] = path
    logger.info("Wrote the report files %s to %s", ", ".join(written), folder)
    return written


def format_report(folder, results, metrics, run_results, config, predictions, errors, written, run_dir=None):
    """Return the text of ``report.md``; see ``write_run_report`` for the arguments' sources."""
    is_training_run = "history" in results
    name = os.path.basename(os.path.normpath(folder))
    sections = [f"# {'Run' if is_training_run else 'Evaluation'} report: {name}", _summary(results, run_results, config, run_dir)]

    if metrics:
        sections.append(_metrics_section(metrics, results if is_training_run else None))
        sections.append(_per_class_section(metrics))
    else:
        sections.append("## Test metrics\n\nThis run had no test split, so there are no test metrics, confusion matrix or mistakes.")
    if CONFUSION_FILE in written:
        sections.append(f"## Confusion matrix\n\n![Confusion matrix: counts and row-normalised]({CONFUSION_FILE})")
    if predictions is not None and predictions.labelled:
        sections.append(_errors_section(predictions, errors))
    if CURVES_FILE in written:
        sections.append(_curves_section(results, config))
    if run_results and run_results.get("parts"):
        sections.append(_parameters_section(run_results))
    return "\n\n".join(section for section in sections if section) + "\n"


def _summary(results, run_results, config, run_dir):
    lines = []
    backbone = config.get("model_name_or_path")
    policy = (run_results or {}).get("policy")
    if policy:
        lines.append(f"Policy `{policy}`" + (f" on the backbone `{backbone}`." if backbone else "."))
    if "history" in results:
        num_epochs = config.get("num_train_epochs")
        of_epochs = f" of {num_epochs}" if num_epochs else ""
        line = f"Trained {results.get('epochs_completed')}{of_epochs} epochs in {results.get('train_seconds', 0):.1f} s"
        if results.get("validation"):
            metric = config.get("metric_for_best_model", "the validation metric")
            line += f"; the weights of epoch {results.get('best_epoch')}, the best by validation {metric}, are kept"
        lines.append(line + ".")
        sizes = results.get("num_examples") or {}
        if sizes:
            lines.append("Examples: " + ", ".join(f"{split} {count:,}" for split, count in sizes.items()) + ".")
    else:
        data = results.get("data") or {}
        source = data.get("test_file") or " ".join(
            part for part in (data.get("dataset"), f"split {data['split']}" if data.get("split") else None) if part
        )
        if run_dir:
            lines.append(f"Evaluation of the run `{run_dir}`.")
        if source:
            lines.append(f"Data: {source}.")
    return " ".join(lines)


METRIC_ROWS = [
    ("accuracy", "accuracy"),
    ("macro_f1", "macro F1"),
    ("macro_precision", "macro precision"),
    ("macro_recall", "macro recall"),
    ("loss", "loss (cross-entropy)"),
]


def _metrics_section(metrics, training_results):
    num_examples = f"{metrics.get('num_examples', 0):,} examples"
    if training_results is None:
        header = ["metric", f"value ({num_examples})"]
        validation = None
    else:
        header = ["metric", f"test ({num_examples})"]
        validation = _best_validation(training_results)
    if validation:
        header.append(f"validation, epoch {training_results.get('best_epoch')}")

    rows = []
    for key, label in METRIC_ROWS:
        if key not in metrics and key not in (validation or {}):
            continue
        row = [label, markdown.format_number(metrics.get(key))]
        if validation:
            row.append(markdown.format_number(validation.get(key)))
        rows.append(row)
    return f"## Metrics\n\n{markdown.table(header, rows, align='l' + 'r' * (len(header) - 1))}"


def _best_validation(results):
    """Return the best epoch's validation metrics, with its loss taken from the history."""
    validation = results.get("validation")
    if not validation:
        return None
    validation = dict(validation)
    losses = (results.get("history") or {}).get("val_loss") or []
    best_epoch = results.get("best_epoch")
    if "loss" not in validation and best_epoch and best_epoch <= len(losses):
        validation["loss"] = losses[best_epoch - 1]
    return validation


def _per_class_section(metrics):
    per_class = metrics.get("per_class") or {}
    rows = [
        [name, markdown.format_number(row["precision"]), markdown.format_number(row["recall"]),
         markdown.format_number(row["f1"]), markdown.format_number(row["support"])]
        for name, row in per_class.items()
    ]
    table = markdown.table(["class", "precision", "recall", "F1", "support"], rows, align="lrrrr")
    return f"## Per-class metrics\n\n{table}"


def _errors_section(predictions, errors):
    labelled = predictions.labelled
    num_errors = sum(predictions.labels[i] != predictions.predicted[i] for i in labelled)
    heading = "## Most confident mistakes"
    if not num_errors:
        return f"{heading}\n\nNo mistakes on the {len(labelled):,} labelled examples."
    shown_errors = errors[:NUM_ERRORS_SHOWN]
    rows = [
        [error["label"], error["predicted_label"], f"{error['predicted_probability']:.3f}", error["text"]]
        for error in shown_errors
    ]
    header = ["true class", "predicted class", "probability of the predicted class", "text"]
    table = markdown.table(header, rows, align="llrl", max_cell_length=120)
    return (
        f"{heading}\n\n{num_errors:,} of {len(labelled):,} labelled examples are wrong. The "
        f"{len(shown_errors)} below have the highest probability of the predicted class; "
        f"[{ERRORS_FILE}]({ERRORS_FILE}) lists up to {NUM_ERRORS}, with full texts.\n\n{table}"
    )


def _curves_section(results, config):
    history = results["history"]
    keys = ", ".join(f"`{key}`" for key in history)
    return f"## Training curves\n\n![Loss and metrics per epoch]({CURVES_FILE})\n\nHistory per epoch: {keys}."


def _parameters_section(run_results):
    rows = []
    for part in run_results["parts"]:
        percent = 100.0 * part["trainable"] / max(part["total"], 1)
        rows.append([part["name"], f"{part['trainable']:,}", f"{part['total']:,}", f"{percent:.2f}%"])
    rows.append(["**total**", f"{run_results['trainable_params']:,}", f"{run_results['total_params']:,}", f"{run_results['trainable_percent']:.2f}%"])
    table = markdown.table(["part", "trainable", "total", "percent"], rows, align="lrrr")
    return f"## Trainable parameters\n\nPolicy `{run_results.get('policy')}`: the parameters the optimizer updates.\n\n{table}"
