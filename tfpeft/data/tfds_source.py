"""Examples from TensorFlow Datasets (TFDS), named ``tfds:NAME`` as in ``tfds:glue/sst2``.

``--text-column``, ``--text-pair-column`` and ``--label-column`` name TFDS features. ClassLabel
ids become their class names, so the label map and predictions show ``positive`` rather than
1. Nothing is downloaded unless ``download`` is set: by default the dataset must already be
prepared in ``data_dir``.
"""

import logging

from tfpeft.data.checks import count_of, format_rows
from tfpeft.data.sources import check_columns, examples_from_columns
from tfpeft.errors import DataError, closest_match

logger = logging.getLogger("tfpeft.data")

TFDS_PREFIX = "tfds:"
BATCH_SIZE = 1024


def is_tfds_name(dataset):
    """Return True for a dataset name of the form ``tfds:NAME``."""
    return isinstance(dataset, str) and dataset.startswith(TFDS_PREFIX)


def _builder(name, data_dir):
    import tensorflow_datasets as tfds

    # Registers the offline bbc_news builder, so that tfds:bbc_news resolves.
    import tfpeft.data.tfds_bbc_news  # noqa: F401

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        known = tfds.list_builders(with_community_datasets=False)
        suggestion = closest_match(name.split("/")[0], known)
        hint = f" Did you mean 'tfds:{suggestion}'?" if suggestion else ""
        raise DataError(
            f"Unknown TFDS dataset {name!r}.{hint} See tfds.list_builders() for the names."
        ) from error
    except ValueError as error:
        # An unknown config such as glue/sst9: TFDS lists the close config names.
        raise DataError(f"TFDS dataset {name!r} could not be built: {error}") from error


def _check_feature_types(features, source, text_columns, label_column):
    import tensorflow as tf

    for column in text_columns:
        feature = features[column]
        if feature.tf_dtype != tf.string or feature.shape != ():
            raise DataError(
                f"{source}: feature {column!r} is {type(feature).__name__} of {feature.tf_dtype.name} "
                f"with shape {feature.shape}, not one text per example. Choose a text feature "
                "with --text-column or --text-pair-column."
            )
    feature = features[label_column]
    if feature.shape != () or not (feature.tf_dtype == tf.string or feature.tf_dtype.is_integer):
        raise DataError(
            f"{source}: feature {label_column!r} is {type(feature).__name__} of "
            f"{feature.tf_dtype.name} with shape {feature.shape}; a label feature holds one class "
            "name or integer id per example. Choose another with --label-column."
        )


def _read_features(dataset, names):
    """Return ``{name: list}`` of the selected features of every example, in order."""
    import tensorflow_datasets as tfds

    def select(example):
        return {name: example[name] for name in names}

    columns = {name: [] for name in names}
    for batch in tfds.as_numpy(dataset.map(select).batch(BATCH_SIZE)):
        for name in names:
            columns[name].extend(batch[name].tolist())
    return {
        name: [value.decode("utf-8") if isinstance(value, bytes) else value for value in values]
        for name, values in columns.items()
    }


def _label_names(labels, feature, rows, source, label_column, role):
    """Map ClassLabel ids to names; -1, TFDS's mark for a missing label, raises ``DataError``."""
    unlabelled = [row for row, label in zip(rows, labels) if label == -1]
    if unlabelled:
        if role == "train":
            hint = "Train on a labelled split with --tfds-train-split."
        else:
            hint = (
                f"Use the validation split in its place (--tfds-{role}-split validation) and hold "
                "out data from the training split (e.g. --tfds-train-split 'train[:90%]' "
                "--tfds-validation-split 'train[90%:]')."
            )
        raise DataError(
            f"{source}: {len(unlabelled)} of {count_of(len(labels), 'example')} have no label in feature "
            f"{label_column!r}: TFDS marks a missing label as -1 ({format_rows(unlabelled)}). "
            f"Benchmarks such as GLUE hide the labels of their test split. {hint}"
        )
    return [feature.int2str(label) for label in labels]


def load_tfds_split(
    dataset,
    split,
    *,
    data_dir=None,
    text_column="text",
    label_column="label",
    text_pair_column=None,
    on_empty_text="drop",
    download=False,
    role="train",
):
    """Read one split of a TFDS dataset as checked ``TextExamples``.

    Args:
        dataset: str. ``tfds:NAME`` or ``tfds:NAME/CONFIG``.
        split: str. A TFDS split, slices included: ``train``, ``validation``, ``train[:90%]``.
        data_dir: str or None. The TFDS data folder; None is TFDS's default
            (``~/tensorflow_datasets``).
        text_column, label_column, text_pair_column: str. Feature names.
        on_empty_text: str. ``drop`` or ``error``.
        download: bool. Let TFDS download and prepare a dataset that ``data_dir`` lacks.
        role: str. ``train``, ``validation`` or ``test``, for messages.

    Raises:
        DataError: an unknown dataset, split or feature, a dataset not prepared in
            ``data_dir`` without ``download``, or an example without a label (-1).
    """
    import tensorflow_datasets as tfds

    name = dataset[len(TFDS_PREFIX):]
    source = f"{dataset} split {split!r}"
    builder = _builder(name, data_dir)
    features = builder.info.features
    check_columns(
        list(features.keys()), source=source, text_column=text_column, label_column=label_column,
        text_pair_column=text_pair_column, kind="feature",
    )
    text_columns = [column for column in (text_column, text_pair_column) if column is not None]
    _check_feature_types(features, source, text_columns, label_column)

    if not builder.is_prepared() and not download:
        raise DataError(
            f"The TFDS dataset {name!r} is not prepared in {str(builder.data_dir_root)!r}. Pass "
            f"--tfds-download to let TFDS download and prepare it (most datasets need a "
            f"network for that), or prepare it where there is one (`tfds build {name} "
            "--data_dir DIR`), copy DIR here and pass --tfds-data-dir DIR."
        )
    try:
        data = tfds.load(name, split=split, data_dir=data_dir, download=download, try_gcs=False)
    except ValueError as error:
        splits = ", ".join(builder.info.splits.keys())
        raise DataError(
            f"{dataset} has no split {split!r} ({error}). Its splits are: {splits}; slices such "
            "as 'train[:90%]' work too."
        ) from error

    names = text_columns + [label_column]
    columns = _read_features(data, names)
    rows = [f"example {i}" for i in range(len(columns[text_column]))]
    feature = features[label_column]
    if isinstance(feature, tfds.features.ClassLabel):
        columns[label_column] = _label_names(columns[label_column], feature, rows, source, label_column, role)
    elif feature.tf_dtype.is_integer:
        columns[label_column] = [int(label) for label in columns[label_column]]
    logger.info("%s: read %d examples from %s", source, len(rows), builder.data_dir)
    return examples_from_columns(
        columns,
        rows,
        source=source,
        name=name.replace("/", "_"),
        text_column=text_column,
        label_column=label_column,
        text_pair_column=text_pair_column,
        on_empty_text=on_empty_text,
        kind="feature",
    )
