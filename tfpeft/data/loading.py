"""Read the configured data of a run into checked train, validation and test examples.

Training data comes from exactly one source: a built-in dataset, a TFDS dataset
(``tfds:NAME``), a file, or in-memory data passed to ``tfpeft.train``. Validation and test
data come from their own file, TFDS split or in-memory data where given, else they are split
from the training data. Every check runs here, before a backbone is loaded or a run folder is
created.
"""

from tfpeft.data.checks import check_num_classes, check_splits
from tfpeft.data.files import read_file
from tfpeft.data.sources import load_builtin, to_examples
from tfpeft.data.splits import split_examples
from tfpeft.data.tfds_source import is_tfds_name, load_tfds_split
from tfpeft.errors import ConfigError

EVALUATION_SPLITS = ("validation", "test")


def _column_options(config):
    return dict(
        text_column=config.text_column,
        label_column=config.label_column,
        text_pair_column=config.text_pair_column,
        on_empty_text=config.on_empty_text,
    )


def read_data_file(config, path):
    """Read ``path`` with the config's columns, encoding and empty-text rule."""
    return read_file(
        path, encoding=config.encoding, encoding_errors=config.encoding_errors, **_column_options(config)
    )


def _read_tfds(config, split, role):
    return load_tfds_split(
        config.dataset,
        split,
        data_dir=config.tfds_data_dir,
        download=config.tfds_download,
        role=role,
        **_column_options(config),
    )


def load_training_examples(config, train_data=None):
    """Return the whole training source as ``TextExamples``, before any split.

    Args:
        config: ``TrainingConfig``.
        train_data: in-memory data (see ``tfpeft.data.to_examples``) or None.
    """
    if train_data is not None:
        if config.dataset is not None or config.train_file is not None:
            raise ConfigError(
                "train_data is given together with dataset or train_file; pass one source of "
                "training data."
            )
        return to_examples(train_data, name="train_data", **_column_options(config))
    if config.dataset is not None:
        if is_tfds_name(config.dataset):
            return _read_tfds(config, config.tfds_train_split, "train")
        if config.text_pair_column is not None:
            raise ConfigError(
                f"The built-in dataset {config.dataset!r} has single texts, but "
                f"text_pair_column={config.text_pair_column!r} is set. Drop --text-pair-column, "
                "or pass sentence pairs with --train-file or a TFDS dataset."
            )
        return load_builtin(config.dataset)
    if config.train_file is not None:
        return read_data_file(config, config.train_file)
    raise ConfigError(
        "No training data: pass --dataset bbc_news (or tweets, or tfds:NAME), or --train-file "
        "with a CSV, TSV, JSON Lines or Parquet file."
    )


def _evaluation_examples(config, role, data):
    """Return the explicit validation or test examples, or None to split them from training."""
    path = getattr(config, f"{role}_file")
    tfds_split = getattr(config, f"tfds_{role}_split")
    candidates = ((f"{role}_data", data), (f"{role}_file", path), (f"tfds_{role}_split", tfds_split))
    set_sources = [name for name, value in candidates if value is not None]
    if len(set_sources) > 1:
        raise ConfigError(
            f"Both {set_sources[0]} and {set_sources[1]} are set; pass one source of {role} data."
        )
    if data is not None:
        return to_examples(data, name=f"{role}_data", **_column_options(config))
    if path is not None:
        return read_data_file(config, path)
    if tfds_split is not None:
        return _read_tfds(config, tfds_split, role)
    return None


def load_splits(config, *, train_data=None, validation_data=None, test_data=None):
    """Read the configured data and return ``{"train", "validation", "test"}`` examples.

    Explicit validation and test data take the place of their split; what is missing is split
    from the training data, stratified and seeded. Raises ``DataError`` or ``ConfigError`` for
    every problem the checks in ``tfpeft.data.checks`` find, and logs a warning when
    evaluation texts also occur in the training data.

    Args:
        config: ``TrainingConfig``.
        train_data, validation_data, test_data: in-memory data (a DataFrame, a dict of
            columns, a ``(texts, labels)`` tuple or ``TextExamples``) or None.
    """
    examples = load_training_examples(config, train_data)
    explicit = {
        "validation": _evaluation_examples(config, "validation", validation_data),
        "test": _evaluation_examples(config, "test", test_data),
    }
    check_num_classes(examples)

    fractions = {
        role: 0.0 if explicit[role] is not None else getattr(config, f"{role}_fraction")
        for role in EVALUATION_SPLITS
    }
    if fractions["validation"] or fractions["test"]:
        split = split_examples(
            examples,
            validation_fraction=fractions["validation"],
            test_fraction=fractions["test"],
            seed=config.seed,
        )
        splits = {"train": split.train, "validation": split.validation, "test": split.test}
    else:
        splits = {"train": examples, "validation": None, "test": None}
    for role, given in explicit.items():
        if given is not None:
            splits[role] = given
    splits = {role: examples for role, examples in splits.items() if examples is not None}
    check_splits(splits)
    return splits
