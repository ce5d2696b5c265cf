"""Seeded, stratified train/validation/test splits."""

import collections
import dataclasses
import math

from tfpeft.data.checks import format_rows, label_place
from tfpeft.errors import DataError


@dataclasses.dataclass
class DataSplits:
    """Train, validation and test examples; validation or test may be None."""

    train: object
    validation: object = None
    test: object = None


def split_examples(examples, *, validation_fraction=0.1, test_fraction=0.1, seed=42):
    """Split ``examples`` into train, validation and test parts, stratified by label.

    With the defaults this is the 80/10/10 split. The same seed and examples give the same
    split on every machine (scikit-learn's ``train_test_split``).

    Raises:
        DataError: a class has too few examples to appear in every split.
    """
    from sklearn.model_selection import train_test_split

    held_out = validation_fraction + test_fraction
    if not 0.0 <= held_out < 1.0:
        raise DataError(
            f"validation_fraction + test_fraction must be in [0, 1); got "
            f"{validation_fraction} + {test_fraction}. Use fractions that add up to less than 1."
        )
    labels = [str(label) for label in examples.labels]
    counts = collections.Counter(labels)
    if len(counts) < 2:
        raise DataError(f"{examples.source}: a classifier needs at least two classes; found {sorted(counts)}.")
    if held_out == 0.0:
        return DataSplits(examples)
    smallest = min(validation_fraction, test_fraction) or held_out
    needed = math.ceil(1.0 / smallest) if smallest > 0 else 2
    rare = {label: count for label, count in sorted(counts.items()) if count < needed}
    if rare:
        rare_rows = [row for row, label in zip(examples.rows, labels) if label in rare]
        raise DataError(
            f"{examples.source}: the classes {rare}{label_place(examples)} have too few examples "
            f"for a stratified split with validation_fraction={validation_fraction} and "
            f"test_fraction={test_fraction}: each class needs at least {needed} (their rows: "
            f"{format_rows(rare_rows)}). Add examples, remove those classes, or pass "
            "--validation-file and --test-file."
        )

    indices = list(range(len(examples)))
    train_indices, held_indices = train_test_split(
        indices, test_size=held_out, random_state=seed, stratify=labels
    )
    if validation_fraction == 0 or test_fraction == 0:
        held = examples.subset(held_indices)
        if validation_fraction == 0:
            return DataSplits(examples.subset(train_indices), None, held)
        return DataSplits(examples.subset(train_indices), held, None)

    held_labels = [labels[i] for i in held_indices]
    validation_indices, test_indices = train_test_split(
        held_indices,
        test_size=test_fraction / held_out,
        random_state=seed,
        stratify=held_labels,
    )
    return DataSplits(
        examples.subset(train_indices),
        examples.subset(validation_indices),
        examples.subset(test_indices),
    )
