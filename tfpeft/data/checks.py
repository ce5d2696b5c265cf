"""Checks of labels and splits that run before training, with errors that point at rows.

Every check raises ``DataError`` with the source (file, DataFrame or TFDS split), the column
and the first few rows, so users can open the file at the right line. Row locators are what
the source gives: 1-based file line numbers counting the header for text files, index labels
for DataFrames, positions for Python lists and TFDS splits.
"""

import collections
import logging
import numbers

from tfpeft.errors import DataError, closest_match

logger = logging.getLogger("tfpeft.data")

MAX_ROWS_SHOWN = 5


def format_rows(rows, limit=MAX_ROWS_SHOWN):
    """Return the first ``limit`` row locators joined by commas, and how many were left out."""
    listed = ", ".join(str(row) for row in rows[:limit])
    if len(rows) > limit:
        listed += f" and {len(rows) - limit} more"
    return listed


def count_of(count, noun):
    """Return ``1 row`` or ``3 rows``: the count with the noun in singular or plural."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def label_place(examples):
    """Return `` in column 'label'`` for messages, or an empty string for unlabelled data."""
    if examples.label_column is None:
        return ""
    return f" in {examples.column_kind} {examples.label_column!r}"


def is_missing(value):
    """Return True for None, NaN, ``pd.NA`` and empty or whitespace-only strings."""
    import pandas as pd

    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict, set)):
        return False
    return bool(pd.isna(value))


def _is_missing_label(label):
    # Spreadsheets and pandas write a missing number as NaN; no real class is named "nan".
    return is_missing(label) or (isinstance(label, str) and label.strip().lower() == "nan")


def clean_labels(labels, rows, *, source, label_column, kind="column"):
    """Check raw labels and return them as str or int.

    Integral floats (``1.0``, as pandas makes them in a column with gaps) become ints. The
    string ``NaN`` (any case) counts as a missing label.

    Raises:
        DataError: a label is missing or NaN, is a float with a fractional part, or is not a
            string or number (a list, for example).
    """
    missing = [row for row, label in zip(rows, labels) if _is_missing_label(label)]
    if missing:
        raise DataError(
            f"{source}: {count_of(len(missing), 'row')} without a label in {kind} "
            f"{label_column!r} ({format_rows(missing)}). Fill in or remove those rows."
        )

    invalid = [
        (row, label)
        for row, label in zip(rows, labels)
        if not isinstance(label, (str, numbers.Real))
    ]
    if invalid:
        row, label = invalid[0]
        raise DataError(
            f"{source}: {kind} {label_column!r} contains a {type(label).__name__} at {row} "
            f"({label!r}) and {len(invalid) - 1} more such values; a label must be a class "
            "name or an integer class id."
        )

    fractional = [
        (row, label)
        for row, label in zip(rows, labels)
        if isinstance(label, numbers.Real)
        and not isinstance(label, numbers.Integral)
        and not float(label).is_integer()
    ]
    if fractional:
        examples = ", ".join(f"{label!r} at {row}" for row, label in fractional[:MAX_ROWS_SHOWN])
        more = f" and {len(fractional) - MAX_ROWS_SHOWN} more" if len(fractional) > MAX_ROWS_SHOWN else ""
        raise DataError(
            f"{source}: {kind} {label_column!r} contains float values ({examples}{more}), but a "
            "classification label must be a class name or an integer class id. tfpeft has no "
            "regression head: bin the values into classes, or choose the right column with "
            "--label-column."
        )
    return [_plain_label(label) for label in labels]


def _plain_label(label):
    if isinstance(label, str):
        return str(label)
    if isinstance(label, bool):
        return label
    # Integral numpy and float values become Python ints, so 1, 1.0 and np.int64(1) are one class.
    return int(label)


def check_num_classes(examples):
    """Raise ``DataError`` unless the training examples hold at least two classes."""
    counts = collections.Counter(str(label) for label in examples.labels)
    if len(counts) >= 2:
        return
    found = ", ".join(f"{name!r} ({count} rows)" for name, count in counts.items()) or "none"
    raise DataError(
        f"{examples.source}: the training labels{label_place(examples)} have "
        f"{count_of(len(counts), 'class')} ({found}), but a classifier needs at least two. "
        "Check --label-column, or add examples of the other classes."
    )


def check_known_labels(evaluation, classes, *, split, train_source):
    """Raise ``DataError`` when ``evaluation`` has labels outside the training ``classes``.

    The error lists every unseen label with its count and first rows, the closest training
    class where one is close (``sports`` for ``sport``) and the training classes.

    Args:
        evaluation: ``TextExamples``. Validation, test or evaluation data.
        classes: iterable. The training labels (raw or class names).
        split: str. The role of ``evaluation``, for the message.
        train_source: str. Where the training classes came from, for the message.
    """
    known = {str(label) for label in classes}
    unseen = collections.defaultdict(list)
    for label, row in zip(evaluation.labels, evaluation.rows):
        if str(label) not in known:
            unseen[str(label)].append(row)
    if not unseen:
        return

    parts = []
    for label, rows in sorted(unseen.items()):
        suggestion = closest_match(label, known)
        hint = f", did you mean {suggestion!r}?" if suggestion else ""
        parts.append(f"{label!r} ({count_of(len(rows), 'row')}: {format_rows(rows)}{hint})")
    raise DataError(
        f"{evaluation.source}: {count_of(len(unseen), f'{split} label')}{label_place(evaluation)} "
        f"never occur in the training data ({train_source}): "
        f"{'; '.join(parts)}. The training classes are: {', '.join(sorted(known))}. Fix those "
        "labels, or add training examples of those classes."
    )


def count_shared_texts(train, evaluation):
    """Return how many ``evaluation`` examples have a text (and pair) that ``train`` also has."""
    seen = set(_text_keys(train))
    return sum(1 for key in _text_keys(evaluation) if key in seen)


def _text_keys(examples):
    pairs = examples.text_pairs if examples.text_pairs is not None else [None] * len(examples)
    return zip(examples.texts, pairs)


def check_splits(splits):
    """Check the splits of a run together: unseen evaluation labels raise, shared texts warn.

    Args:
        splits: dict. ``train`` and optionally ``validation`` and ``test`` ``TextExamples``.
    """
    train = splits["train"]
    for split in ("validation", "test"):
        if split in splits:
            check_known_labels(splits[split], train.labels, split=split, train_source=train.source)
    for split in ("validation", "test"):
        if split not in splits:
            continue
        num_shared = count_shared_texts(train, splits[split])
        if num_shared:
            logger.warning(
                "%d of %d %s examples (%s) have a text that also occurs in the training data "
                "(%s), so %s metrics overstate how the model does on new texts",
                num_shared,
                len(splits[split]),
                split,
                splits[split].source,
                train.source,
                split,
            )


def log_class_counts(examples, label_map, label_ids, class_weight=None):
    """Log the training examples per class and, where given, the loss weight of each class."""
    counts = collections.Counter(label_ids)
    parts = []
    for i, name in enumerate(label_map.names):
        part = f"{name} {counts.get(i, 0)}"
        if class_weight is not None:
            part += f" (weight {class_weight[i]:.4g})"
        parts.append(part)
    logger.info("%s: training examples per class: %s", examples.source, ", ".join(parts))
