"""The rows of ``predictions.csv``: reading them, the confusion counts and the worst mistakes."""

import dataclasses
import logging

import numpy as np

from tfpeft.errors import RunFolderError

logger = logging.getLogger("tfpeft.reports")

# How many of the most confident mistakes errors.csv keeps.
NUM_ERRORS = 50
PROBABILITY_PREFIX = "prob_"


@dataclasses.dataclass
class Predictions:
    """The rows of a ``predictions.csv``.

    Args:
        texts: list of str.
        labels: list of str. The true class names; empty for unlabelled texts.
        predicted: list of str. The predicted class names.
        probabilities: float array ``[num_texts, num_classes]``.
        class_names: list of str. The classes in the order of the probability columns.
    """

    texts: list
    labels: list
    predicted: list
    probabilities: np.ndarray
    class_names: list

    def __len__(self):
        return len(self.texts)

    @property
    def labelled(self):
        """Return the row indices that have a true label."""
        return [i for i, label in enumerate(self.labels) if label != ""]

    def accuracy(self):
        """Return the share of labelled rows whose predicted class is the true one."""
        rows = self.labelled
        if not rows:
            return None
        return sum(self.labels[i] == self.predicted[i] for i in rows) / len(rows)


def read_predictions(path):
    """Read a ``predictions.csv`` written by training or evaluation into ``Predictions``."""
    import pandas as pd

    try:
        # Strings throughout, so that labels such as "1" or "NA" keep their spelling.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, ValueError) as error:
        raise RunFolderError(f"Cannot read {path!r}: {error}") from error

    class_names = [column[len(PROBABILITY_PREFIX):] for column in frame.columns if column.startswith(PROBABILITY_PREFIX)]
    missing = [column for column in ("text", "label", "predicted_label") if column not in frame.columns]
    if missing or not class_names:
        raise RunFolderError(
            f"{path!r} is not a tfpeft predictions file: missing the column(s) "
            f"{', '.join(missing + ([] if class_names else ['prob_<class>']))}. It needs text, label, "
            "predicted_label and one prob_<class> column per class, as training and `tfpeft "
            "evaluate` write it."
        )

    probability_columns = [PROBABILITY_PREFIX + name for name in class_names]
    try:
        probabilities = frame[probability_columns].astype(np.float64).to_numpy()
    except ValueError as error:
        raise RunFolderError(f"{path!r} has a probability that is not a number: {error}") from error
    unknown = sorted(set(frame["predicted_label"]) - set(class_names))
    if unknown:
        raise RunFolderError(
            f"{path!r} predicts the class(es) {unknown[:5]} that have no prob_ column; the "
            f"classes are {class_names}."
        )
    return Predictions(
        texts=frame["text"].tolist(),
        labels=frame["label"].tolist(),
        predicted=frame["predicted_label"].tolist(),
        probabilities=probabilities,
        class_names=class_names,
    )


def confusion_counts(predictions):
    """Return the ``[num_classes, num_classes]`` counts of (true, predicted) over labelled rows.

    A true label that is not one of the classes (possible in an evaluation file with a class
    the run never saw) is left out, with a warning in the log.
    """
    index = {name: i for i, name in enumerate(predictions.class_names)}
    counts = np.zeros((len(index), len(index)), dtype=np.int64)
    num_unknown = 0
    for i in predictions.labelled:
        true_index = index.get(predictions.labels[i])
        if true_index is None:
            num_unknown += 1
            continue
        counts[true_index, index[predictions.predicted[i]]] += 1
    if num_unknown:
        logger.warning("%d rows have a true label outside the classes %s; the confusion matrix leaves them out", num_unknown, predictions.class_names)
    return counts


def most_confident_errors(predictions, limit=NUM_ERRORS):
    """Return up to ``limit`` mistakes, highest probability of the predicted class first.

    Each is a dict with ``row`` (0-based row of ``predictions.csv``), ``text``, ``label``,
    ``predicted_label``, ``predicted_probability`` and ``label_probability`` (the probability
    given to the true class; None when the true class is unknown to the run). Equal
    probabilities keep the file's order.
    """
    index = {name: i for i, name in enumerate(predictions.class_names)}
    errors = []
    for i in predictions.labelled:
        if predictions.labels[i] == predictions.predicted[i]:
            continue
        true_index = index.get(predictions.labels[i])
        errors.append(
            {
                "row": i,
                "text": predictions.texts[i],
                "label": predictions.labels[i],
                "predicted_label": predictions.predicted[i],
                "predicted_probability": float(predictions.probabilities[i, index[predictions.predicted[i]]]),
                "label_probability": None if true_index is None else float(predictions.probabilities[i, true_index]),
            }
        )
    errors.sort(key=lambda error: -error["predicted_probability"])
    return errors[:limit]


def write_errors(path, errors):
    """Write the mistakes of ``most_confident_errors`` as a CSV file, header included."""
    import csv

    columns = ["row", "text", "label", "predicted_label", "predicted_probability", "label_probability"]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for error in errors:
            writer.writerow({key: "" if error[key] is None else error[key] for key in columns})
