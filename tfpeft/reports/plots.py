"""The report pictures, drawn with matplotlib's Agg canvas.

Figures are built as ``matplotlib.figure.Figure`` objects on a ``FigureCanvasAgg`` and never
through ``pyplot``, so plotting works on a server without a display and leaves the pyplot
state (and backend) of a user's notebook alone. matplotlib is imported inside the functions,
so ``import tfpeft`` does not pay for it.
"""

import math

DPI = 100
# Colours of the "tab10" palette, used by name so that each series keeps its colour.
COLORS = {"train": "#1f77b4", "validation": "#ff7f0e", "f1": "#2ca02c", "extra": "#9467bd", "best": "#d62728"}


def new_figure(width, height, **kwargs):
    """Return a ``Figure`` of ``width`` x ``height`` inches with its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path):
    """Write ``figure`` as a PNG at ``path``, at its own size (no cropping)."""
    figure.savefig(path, dpi=DPI, format="png", facecolor="white")


def plot_training_curves(history, path, *, best_epoch=None, best_metric=None):
    """Draw the loss (left) and the accuracy and validation metrics (right) per epoch.

    Args:
        history: dict. Keras history: ``loss``, ``accuracy`` and optionally ``val_*`` lists.
        path: str. The PNG to write.
        best_epoch: int or None. The 1-based epoch whose weights were kept; drawn as a line.
        best_metric: str or None. The validation metric that picked ``best_epoch``, such as
            ``macro_f1``; drawn in the right panel too when it is not there already.
    """
    figure = new_figure(11, 4.5)
    loss_axes, metric_axes = figure.subplots(1, 2)
    num_epochs = max(len(values) for values in history.values())
    epochs = list(range(1, num_epochs + 1))

    loss_series = [("loss", "train loss", COLORS["train"]), ("val_loss", "validation loss", COLORS["validation"])]
    metric_series = [
        ("accuracy", "train accuracy", COLORS["train"]),
        ("val_accuracy", "validation accuracy", COLORS["validation"]),
        ("val_macro_f1", "validation macro F1", COLORS["f1"]),
    ]
    extra_key = f"val_{best_metric}" if best_metric else None
    if extra_key and extra_key not in ("val_loss", "val_accuracy", "val_macro_f1"):
        metric_series.append((extra_key, f"validation {best_metric.replace('_', ' ')}", COLORS["extra"]))

    for axes, series, title in (
        (loss_axes, loss_series, "Loss (cross-entropy)"),
        (metric_axes, metric_series, "Accuracy and validation metrics"),
    ):
        for key, label, color in series:
            values = history.get(key)
            if values:
                axes.plot(epochs[: len(values)], values, marker="o", color=color, label=label)
        if best_epoch and any(key.startswith("val_") for key in history):
            axes.axvline(best_epoch, color=COLORS["best"], linestyle="--", linewidth=1, label=f"best epoch ({best_epoch}), kept")
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.set_xticks(epochs if num_epochs <= 20 else _integer_ticks(num_epochs))
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize="small")
    metric_axes.set_ylim(_unit_range_limits(history, [key for key, _, _ in metric_series]))
    save_figure(figure, path)


def _integer_ticks(num_epochs):
    step = math.ceil(num_epochs / 10)
    return list(range(1, num_epochs + 1, step))


def _unit_range_limits(history, keys):
    """Return y limits that show values in [0, 1] with a margin, zoomed in when all are high."""
    values = [value for key in keys for value in history.get(key, [])]
    low = min(values, default=0.0)
    bottom = 0.0 if low < 0.5 else max(0.0, math.floor(low * 10) / 10 - 0.05)
    return bottom, 1.02


def plot_confusion_matrix(counts, class_names, path, *, title="Confusion matrix"):
    """Draw the confusion matrix as counts (left) and row-normalised (right), with class names.

    Row ``i`` is the true class ``class_names[i]``, column ``j`` the predicted class. A row of a
    class without examples is all zeros in the normalised panel.
    """
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    counts = np.asarray(counts, dtype=np.int64)
    num_classes = len(class_names)
    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=np.float64), where=row_sums > 0)

    side = max(4.5, 0.5 * num_classes + 2.5)
    figure = new_figure(2 * side + 1, side + 0.5)
    figure.suptitle(title)
    count_axes, normalised_axes = figure.subplots(1, 2)
    panels = (
        (count_axes, counts, "Counts", "d", max(int(counts.max()), 1)),
        (normalised_axes, normalised, "Share of each true class (rows sum to 1)", ".2f", 1.0),
    )
    for axes, values, panel_title, number_format, vmax in panels:
        image = axes.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
        colorbar = figure.colorbar(image, ax=axes, shrink=0.8)
        if number_format == "d":
            colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(panel_title, fontsize="medium")
        axes.set_xticks(range(num_classes), labels=class_names, rotation=45, ha="right", rotation_mode="anchor")
        axes.set_yticks(range(num_classes), labels=class_names)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        # Past about 30 classes the numbers no longer fit in their cells; the colours remain.
        if num_classes <= 30:
            for i in range(num_classes):
                for j in range(num_classes):
                    color = "white" if values[i, j] > 0.6 * vmax else "black"
                    axes.text(j, i, format(values[i, j], number_format), ha="center", va="center", color=color, fontsize="small")
    save_figure(figure, path)


def plot_comparison(rows, path, names=None):
    """Draw bars per run: test accuracy and macro F1, trainable percent, and train seconds.

    Args:
        rows: list of dict with ``run``, ``accuracy``, ``macro_f1``, ``trainable_percent`` and
            ``train_seconds``; a value of None leaves its bar out.
        path: str. The PNG to write.
        names: list of str or None. The label of each run; default its ``run`` value.
    """
    import numpy as np

    names = names or [row["run"] for row in rows]
    positions = np.arange(len(rows))
    figure = new_figure(max(11, 1.2 * len(rows) + 6), 4.8)
    score_axes, percent_axes, seconds_axes = figure.subplots(1, 3, width_ratios=[2, 1, 1])

    width = 0.38
    for offset, key, label, color in (
        (-width / 2, "accuracy", "test accuracy", COLORS["train"]),
        (width / 2, "macro_f1", "test macro F1", COLORS["f1"]),
    ):
        _bars(score_axes, positions + offset, [row[key] for row in rows], width, color, label, "{:.3f}")
    # Headroom above 1.0 keeps the legend clear of the bars of good runs.
    score_axes.set_ylim(0, 1.25)
    score_axes.set_yticks(np.linspace(0.0, 1.0, 6))
    score_axes.set_title("Test accuracy and macro F1")
    score_axes.legend(loc="upper center", ncols=2, fontsize="small")

    _bars(percent_axes, positions, [row["trainable_percent"] for row in rows], 0.6, COLORS["extra"], None, "{:.2f}%")
    percent_axes.set_title("Trainable parameters (%)")
    _bars(seconds_axes, positions, [row["train_seconds"] for row in rows], 0.6, COLORS["validation"], None, "{:.1f}")
    seconds_axes.set_title("Training time (s)")

    for axes in (score_axes, percent_axes, seconds_axes):
        axes.set_xticks(positions, labels=names, rotation=30, ha="right", rotation_mode="anchor", fontsize="small")
        axes.grid(True, axis="y", alpha=0.3)
    for axes in (percent_axes, seconds_axes):
        axes.margins(y=0.15)
    save_figure(figure, path)


def _bars(axes, positions, values, width, color, label, number_format):
    present = [(x, value) for x, value in zip(positions, values) if value is not None]
    if not present:
        return
    xs, heights = zip(*present)
    bars = axes.bar(xs, heights, width, color=color, label=label)
    axes.bar_label(bars, labels=[number_format.format(value) for value in heights], fontsize="x-small", padding=2)


def plot_objective(values, objectives, path, *, name, objective_name, log_scale=False, best_index=None):
    """Draw the objective of each finished trial against one numeric hyperparameter.

    Args:
        values: list of float. The hyperparameter of each trial.
        objectives: list of float. The objective of each trial.
        path: str. The PNG to write.
        name: str. The hyperparameter name, for the x axis.
        objective_name: str. For the y axis.
        log_scale: bool. A logarithmic x axis, as for learning rates.
        best_index: int or None. The position of the best trial, drawn in another colour.
    """
    figure = new_figure(7, 4.5)
    axes = figure.subplots()
    axes.scatter(values, objectives, s=40, color=COLORS["train"], alpha=0.8, label="trial")
    if best_index is not None:
        axes.scatter([values[best_index]], [objectives[best_index]], s=120, color=COLORS["best"], marker="*", label="best trial", zorder=3)
    if log_scale:
        axes.set_xscale("log")
    _label_objective_axes(axes, name, objective_name)
    save_figure(figure, path)


def plot_objective_by_category(categories, values, objectives, path, *, name, objective_name, best_index=None):
    """Draw the objective of each finished trial in one column per category, with its mean.

    Points within a column are spread sideways by a fixed pattern, so that equal objectives
    stay visible and the picture is the same on every run.

    Args:
        categories: list of str. The distinct categories, in the order of the columns.
        values: list of str. The category of each trial.
        objectives: list of float.
        path, name, objective_name, best_index: as for ``plot_objective``.
    """
    figure = new_figure(max(7, 0.9 * len(categories) + 3), 4.5)
    axes = figure.subplots()
    column = {category: i for i, category in enumerate(categories)}
    seen = {}
    xs = []
    for value in values:
        rank = seen.get(value, 0)
        seen[value] = rank + 1
        # 0, +1, -1, +2, -2, ... steps of 0.06 to the side of the column, within +-0.3.
        side = (rank + 1) // 2 * (1 if rank % 2 else -1)
        xs.append(column[value] + max(-0.3, min(0.3, 0.06 * side)))
    axes.scatter(xs, objectives, s=40, color=COLORS["train"], alpha=0.8, label="trial")

    for category in categories:
        scores = [objective for value, objective in zip(values, objectives) if value == category]
        if scores:
            mean = sum(scores) / len(scores)
            axes.hlines(mean, column[category] - 0.35, column[category] + 0.35, color=COLORS["validation"], linewidth=2)
    axes.plot([], [], color=COLORS["validation"], linewidth=2, label="mean")
    if best_index is not None:
        axes.scatter([xs[best_index]], [objectives[best_index]], s=120, color=COLORS["best"], marker="*", label="best trial", zorder=3)
    axes.set_xticks(range(len(categories)), labels=categories, rotation=30 if len(categories) > 5 else 0)
    axes.set_xlim(-0.6, len(categories) - 0.4)
    _label_objective_axes(axes, name, objective_name)
    save_figure(figure, path)


def _label_objective_axes(axes, name, objective_name):
    axes.set_xlabel(name)
    axes.set_ylabel(objective_name)
    axes.set_title(f"{objective_name} against {name}")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
