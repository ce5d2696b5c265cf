"""The map between class names and the integer ids the head predicts."""

import json
import numbers

import numpy as np

from tfpeft.errors import DataError

CLASS_WEIGHTS = ("none", "balanced")


class LabelMap:
    """Class names in id order: ``names[i]`` is the class of logit ``i``.

    Args:
        names: list of str. Distinct class names.

    Example:

    >>> label_map = LabelMap.from_labels(["sport", "tech", "sport"])
    >>> label_map.names, label_map.encode(["tech"])
    (['sport', 'tech'], [1])
    """

    def __init__(self, names):
        names = [str(name) for name in names]
        if len(set(names)) != len(names):
            raise DataError(f"Class names must be distinct; got {names}.")
        self.names = names
        self._ids = {name: i for i, name in enumerate(names)}

    @classmethod
    def from_labels(cls, labels):
        """Build the map from raw labels: sorted numerically for numbers, else by name."""
        distinct = set(labels)
        if all(isinstance(label, numbers.Integral) for label in distinct):
            return cls([str(label) for label in sorted(distinct)])
        return cls(sorted(str(label) for label in distinct))

    @property
    def num_labels(self):
        return len(self.names)

    def encode(self, labels, rows=None):
        """Return the id of each raw label; a label outside the map raises ``DataError``."""
        ids = []
        for i, label in enumerate(labels):
            name = str(label)
            if name not in self._ids:
                where = f" at {rows[i]}" if rows else ""
                raise DataError(
                    f"Label {name!r}{where} is not one of the training classes "
                    f"({', '.join(self.names)}). Every evaluation label must appear in the "
                    "training data."
                )
            ids.append(self._ids[name])
        return ids

    def decode(self, ids):
        """Return the class name of each id."""
        return [self.names[int(i)] for i in ids]

    def save(self, path):
        with open(path, "w", encoding="utf-8") as file:
            json.dump(self.names, file, indent=2, ensure_ascii=False)
            file.write("\n")

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as file:
            return cls(json.load(file))

    def __eq__(self, other):
        return isinstance(other, LabelMap) and self.names == other.names

    def __repr__(self):
        return f"LabelMap({self.names!r})"


def class_counts(label_ids, num_labels):
    """Return the number of examples of each class id, as a list of ``num_labels`` ints."""
    return np.bincount(np.asarray(label_ids, dtype=np.int64), minlength=num_labels).tolist()


def balanced_class_weights(label_ids, num_labels):
    """Return ``{class id: weight}`` with scikit-learn's ``balanced`` rule.

    The weight of class ``c`` is ``num_examples / (num_labels * count(c))``, so every class
    contributes the same total weight to the loss. A class without examples gets weight 1.0,
    which never applies because no example has it.
    """
    counts = class_counts(label_ids, num_labels)
    num_examples = sum(counts)
    return {
        class_id: num_examples / (num_labels * count) if count else 1.0
        for class_id, count in enumerate(counts)
    }
