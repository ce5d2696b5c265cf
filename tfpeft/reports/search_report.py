"""The report of a hyperparameter search: the trials table and the objective per hyperparameter.

``write_search_report`` reads ``TUNING_DIR/trials.csv``: one row per trial with the columns
``trial_id``, one column per hyperparameter, ``objective``, ``epochs``, ``seconds``,
``status`` and ``error``. A trial without an objective (failed or stopped) is listed in the
table but left out of the plots.
"""

import dataclasses
import logging
import math
import os
import re

from tfpeft.errors import ConfigError, RunFolderError
from tfpeft.reports import markdown, plots

logger = logging.getLogger("tfpeft.reports")

TRIALS_FILE = "trials.csv"
REPORT_FILE = "report.md"
TRIAL_COLUMNS = ("trial_id", "objective", "epochs", "seconds", "status", "error")
# Hyperband's own bookkeeping values (tuner/epochs, tuner/round, ...) are not searched over.
BOOKKEEPING_PREFIX = "tuner/"
DIRECTIONS = ("max", "min")


@dataclasses.dataclass
class Trials:
    """The rows of a ``trials.csv``.

    Args:
        hyperparameters: list of str. The hyperparameter columns, in file order.
        rows: list of dict. One per trial: the file's strings, with ``objective`` as a float
            or None.
    """

    hyperparameters: list
    rows: list

    @property
    def finished(self):
        """Return the rows that have an objective."""
        return [row for row in self.rows if row["objective"] is not None]


def read_trials(path):
    """Read a ``trials.csv`` into ``Trials``; raise ``RunFolderError`` naming the bad row."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise RunFolderError(
            f"{path!r} not found. Pass the tuning folder of a search (OUTPUT_DIR/tuning), "
            "which holds the trials.csv the search writes."
        ) from None
    except (OSError, ValueError) as error:
        raise RunFolderError(f"Cannot read {path!r}: {error}") from error

    missing = [column for column in TRIAL_COLUMNS if column not in frame.columns]
    if missing:
        raise RunFolderError(
            f"{path!r} lacks the column(s) {', '.join(missing)}. A trials file has trial_id, one "
            "column per hyperparameter, objective, epochs, seconds, status and error."
        )
    hyperparameters = [column for column in frame.columns if column not in TRIAL_COLUMNS]

    rows = []
    for index, record in enumerate(frame.to_dict("records")):
        text = record["objective"].strip()
        try:
            objective = float(text) if text else None
        except ValueError:
            raise RunFolderError(
                f"{path!r} line {index + 2} (trial {record['trial_id']!r}): objective {text!r} is "
                "not a number. Leave it empty for a trial that did not finish."
            ) from None
        if objective is not None and not math.isfinite(objective):
            objective = None
        rows.append({**record, "objective": objective})
    return Trials(hyperparameters, rows)


def _as_floats(values):
    """Return ``values`` as floats, or None when one of them is not a number."""
    try:
        return [float(value) for value in values]
    except ValueError:
        return None


def use_log_scale(name, values):
    """Return whether to draw ``values`` of hyperparameter ``name`` on a logarithmic axis.

    Learning rates are searched on a log scale, so they are drawn on one. So are other
    positive, non-integer values that span two or more powers of ten.
    """
    if not values or min(values) <= 0:
        return False
    if "learning_rate" in name:
        return True
    return not all(value.is_integer() for value in values) and max(values) / min(values) >= 100


def plot_file_name(name):
    """Return the PNG name of the plot of hyperparameter ``name``, safe as a file name."""
    return "objective_vs_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png"


def _best_row(rows, direction):
    finished = [row for row in rows if row["objective"] is not None]
    if not finished:
        return None
    choose = max if direction == "max" else min
    return choose(finished, key=lambda row: row["objective"])


def write_search_report(tuning_dir, *, objective_name="objective", direction="max"):
    """Write ``report.md`` and one plot of the objective per hyperparameter into ``tuning_dir``.

    Numeric hyperparameters get a scatter plot (log x for learning rates), others one column of
    points per category with the category's mean. The best trial is marked in each. Report
    files written before are replaced; ``trials.csv`` is only read.

    Args:
        tuning_dir: str. The folder holding ``trials.csv``.
        objective_name: str. What the objective is, such as ``val_macro_f1``, for titles.
        direction: str. ``max`` when a higher objective is better, ``min`` for a loss.

    Returns:
        dict of file name to path, for each file written.

    Example:

    >>> tfpeft.write_search_report("runs/search/tuning", objective_name="val_macro_f1")
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"Invalid direction={direction!r}; use 'max' (higher is better) or 'min'.")
    trials = read_trials(os.path.join(tuning_dir, TRIALS_FILE))
    best = _best_row(trials.rows, direction)
    finished = trials.finished

    written = {}
    plotted = []
    for name in trials.hyperparameters:
        if name.startswith(BOOKKEEPING_PREFIX):
            continue
        # A conditional hyperparameter is empty in the trials that did not use it.
        points = [row for row in finished if row[name] != ""]
        if not points:
            continue
        path = os.path.join(tuning_dir, plot_file_name(name))
        _plot_hyperparameter(name, points, best, path, objective_name)
        written[os.path.basename(path)] = path
        plotted.append(name)

    text = format_search_report(trials, best, plotted, objective_name, direction)
    path = os.path.join(tuning_dir, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    written[REPORT_FILE] = path
    logger.info("Wrote the search report files %s to %s", ", ".join(written), tuning_dir)
    return written


def _plot_hyperparameter(name, points, best, path, objective_name):
    objectives = [row["objective"] for row in points]
    best_index = next((i for i, row in enumerate(points) if row is best), None)
    numbers = _as_floats([row[name] for row in points])
    if numbers is not None:
        plots.plot_objective(
            numbers,
            objectives,
            path,
            name=name,
            objective_name=objective_name,
            log_scale=use_log_scale(name, numbers),
            best_index=best_index,
        )
        return
    values = [row[name] for row in points]
    categories = sorted(set(values))
    plots.plot_objective_by_category(
        categories, values, objectives, path, name=name, objective_name=objective_name, best_index=best_index
    )


def _sort_key(row, direction):
    """Trials with an objective first, best first; then the others in file order."""
    if row["objective"] is None:
        return (1, 0.0)
    return (0, -row["objective"] if direction == "max" else row["objective"])


def format_search_report(trials, best, plotted, objective_name, direction):
    """Return the text of the search's ``report.md``."""
    statuses = {}
    for row in trials.rows:
        statuses[row["status"] or "unknown"] = statuses.get(row["status"] or "unknown", 0) + 1
    counts = ", ".join(f"{count} {status}" for status, count in statuses.items())
    better = "higher" if direction == "max" else "lower"
    lines = [
        "# Search report",
        f"{len(trials.rows)} trials ({counts}). Objective: {objective_name}, {better} is better.",
    ]
    if best is None:
        lines.append("No trial has an objective yet, so there is no best trial and there are no plots.")
    else:
        settings = ", ".join(
            f"{name}={best[name]}"
            for name in trials.hyperparameters
            if best[name] != "" and not name.startswith(BOOKKEEPING_PREFIX)
        )
        lines.append(f"Best trial: {best['trial_id']}, {objective_name} {best['objective']:.4f}, with {settings}.")

    header = ["trial"] + trials.hyperparameters + [objective_name, "epochs", "seconds", "status", "error"]
    rows = [
        [row["trial_id"]]
        + [row[name] for name in trials.hyperparameters]
        + [markdown.format_number(row["objective"]), row["epochs"], _seconds(row["seconds"]), row["status"], row["error"]]
        for row in sorted(trials.rows, key=lambda row: _sort_key(row, direction))
    ]
    align = "l" + "l" * len(trials.hyperparameters) + "rrrll"
    lines.append("## Trials\n\nBest first; trials without an objective last.\n\n" + markdown.table(header, rows, align=align, max_cell_length=100))

    if plotted:
        images = "\n\n".join(f"![{objective_name} against {name}]({plot_file_name(name)})" for name in plotted)
        num_unplotted = len(trials.rows) - len(trials.finished)
        unplotted = (
            f" Trials without an objective are not drawn ({num_unplotted} of {len(trials.rows)})."
            if num_unplotted
            else ""
        )
        lines.append(f"## {objective_name} against each hyperparameter\n\nThe star marks the best trial.{unplotted}\n\n{images}")
    return "\n\n".join(lines) + "\n"


def _seconds(text):
    numbers = _as_floats([text]) if text else None
    return f"{numbers[0]:.1f}" if numbers else text
