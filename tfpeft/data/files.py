"""Read examples from CSV, TSV, JSON Lines and Parquet files.

Text files are decoded here rather than inside pandas, so that a decoding error can name the
byte offset and the line. They are parsed with the ``csv`` and ``json`` modules, so that every
row keeps its exact 1-based line number (counting the header), also when a quoted CSV field
spans several lines.
"""

import codecs
import csv
import io
import json
import logging
import os
import re
import threading

from tfpeft.data.checks import MAX_ROWS_SHOWN
from tfpeft.data.sources import examples_from_columns
from tfpeft.errors import DataError

logger = logging.getLogger("tfpeft.data")

# File extension -> format.
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
DELIMITERS = {"csv": ",", "tsv": "\t"}
ENCODING_ERRORS = ("strict", "replace")

# Python's csv module rejects fields over 128 KiB by default; long documents can exceed it.
MAX_CSV_FIELD_CHARS = 2**31 - 1

# Integers written the way Python prints them, so that reading one as an int keeps its text.
_INTEGER = re.compile(r"-?(0|[1-9]\d*)")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")

# The codec error handler "tfpeft-replace" behaves like Python's "replace" and also records
# where it replaced, so the count can be logged. Handlers are process-wide, hence thread-local
# storage for the offsets.
_REPLACE_HANDLER = "tfpeft-replace"
_replaced = threading.local()


def _replace_and_record(error):
    _replaced.offsets.append(error.start)
    return ("\ufffd", error.end)


codecs.register_error(_REPLACE_HANDLER, _replace_and_record)


def decode_file(path, encoding="utf-8", errors="strict"):
    """Return the text of ``path`` decoded with ``encoding``.

    A UTF-8 byte-order mark is accepted and removed. With ``errors='strict'`` an undecodable
    byte raises ``DataError`` with its byte offset, line and the ``--encoding`` fix. With
    ``errors='replace'`` each undecodable sequence becomes U+FFFD and the count is logged.
    """
    try:
        codec = codecs.lookup(encoding)
    except LookupError:
        raise DataError(
            f"Unknown encoding {encoding!r} for the data file {path!r}; use a Python codec "
            "name such as utf-8, latin-1 or cp1252."
        ) from None
    if errors not in ENCODING_ERRORS:
        raise DataError(f"Invalid encoding_errors={errors!r}: use 'strict' or 'replace'.")
    with open(path, "rb") as file:
        raw = file.read()
    start = 3 if codec.name == "utf-8" and raw.startswith(codecs.BOM_UTF8) else 0
    data = memoryview(raw)[start:]

    if errors == "strict":
        try:
            return codecs.decode(data, codec.name)
        except UnicodeDecodeError as error:
            offset = start + error.start
            line = _line_number(raw, offset)
            bad = " ".join(f"0x{byte:02x}" for byte in raw[offset:start + error.end][:4])
            raise DataError(
                f"The data file {path!r} is not valid {encoding}: byte {bad} at byte offset "
                f"{offset} (line {line}) cannot be decoded. Pass the file's encoding, e.g. "
                "--encoding latin-1 (or cp1252 for files saved on Windows), or pass "
                "--encoding-errors replace to read it with U+FFFD in place of such bytes."
            ) from error

    _replaced.offsets = []
    try:
        text = codecs.decode(data, codec.name, _REPLACE_HANDLER)
        offsets = [start + offset for offset in _replaced.offsets]
    finally:
        del _replaced.offsets
    if offsets:
        lines = [f"line {_line_number(raw, offset)}" for offset in offsets[:MAX_ROWS_SHOWN]]
        more = ", ..." if len(offsets) > MAX_ROWS_SHOWN else ""
        logger.warning(
            "%s: replaced %d characters that are not valid %s with U+FFFD (--encoding-errors "
            "replace), at %s%s",
            path, len(offsets), encoding, ", ".join(lines), more,
        )
    return text


def _line_number(raw, offset):
    """Return the 1-based line of byte ``offset``; exact for ASCII-compatible encodings."""
    return raw.count(b"\n", 0, offset) + 1


def _parse_delimited(text, path, delimiter):
    """Return ``(header, records, rows)`` of a CSV or TSV text; blank lines are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, records, rows = None, [], []
    last_line = 0
    field_size_limit = csv.field_size_limit(MAX_CSV_FIELD_CHARS)
    try:
        for record in reader:
            first_line = last_line + 1
            last_line = reader.line_num
            if not record:
                continue
            if header is None:
                header = record
                continue
            if len(record) > len(header) and any(field.strip() for field in record[len(header):]):
                name = "a comma" if delimiter == "," else "a tab"
                raise DataError(
                    f"{path} line {first_line}: the row has {len(record)} fields but the header "
                    f"has {len(header)} ({', '.join(header)}). Quote fields that contain {name}, "
                    'e.g. "red, green".'
                )
            records.append(record + [""] * (len(header) - len(record)))
            rows.append(f"line {first_line}")
    except csv.Error as error:
        raise DataError(f"{path} line {reader.line_num}: the file could not be parsed: {error}.") from error
    finally:
        csv.field_size_limit(field_size_limit)
    if header is None:
        raise DataError(f"The data file {path!r} is empty; it needs a header line and data rows.")
    return header, records, rows


def _read_delimited(path, text, delimiter, label_column):
    header, records, rows = _parse_delimited(text, path, delimiter)
    columns = {}
    for i, name in enumerate(header):
        # With duplicate names the first column wins, as a reader of the header would expect.
        columns.setdefault(name, [record[i] for record in records])
    if label_column in columns:
        columns[label_column] = _parse_numbers([value.strip() for value in columns[label_column]])
    return columns, rows


def _parse_numbers(values):
    """Return the values as ints when every non-empty one is an integer as Python writes it.

    A column of numbers with a fractional part (``0.5``) becomes floats, which the label checks
    reject as regression targets. Anything else stays text, so that labels such as ``007`` or
    ``1e3`` keep their spelling.
    """
    present = [value for value in values if value]
    if present and all(_INTEGER.fullmatch(value) for value in present):
        return [int(value) if value else value for value in values]
    if present and all(_FLOAT.fullmatch(value) for value in present):
        if any(not float(value).is_integer() for value in present):
            return [float(value) if value else value for value in values]
    return values


def _read_json_lines(path, text):
    records, rows = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path} line {number}: invalid JSON ({error.msg} at column {error.colno}). "
                "Each line of a JSON Lines file must hold one JSON object."
            ) from error
        if not isinstance(record, dict):
            raise DataError(
                f"{path} line {number}: expected a JSON object such as "
                f'{{"text": "...", "label": "..."}}, got a {type(record).__name__}.'
            )
        records.append(record)
        rows.append(f"line {number}")
    return _records_to_columns(records), rows


def _read_json_array(path, text):
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path} line {error.lineno}: invalid JSON ({error.msg} at column {error.colno}).") from error
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise DataError(
            f"The data file {path!r} must contain one JSON object per line (JSON Lines) or a JSON "
            "array of objects."
        )
    return _records_to_columns(records), [f"record {i + 1}" for i in range(len(records))]


def _records_to_columns(records):
    names = {}
    for record in records:
        names.update(dict.fromkeys(record))
    return {str(name): [record.get(name) for record in records] for name in names}


def _read_parquet(path, requested):
    import pandas as pd
    import pyarrow.parquet as pq

    try:
        names = [str(name) for name in pq.read_schema(path).names]
        frame = pd.read_parquet(path, columns=[name for name in requested if name in names])
    except (OSError, ValueError) as error:
        raise DataError(f"The data file {path!r} could not be read as Parquet: {error}") from error
    columns = {name: frame[name].tolist() for name in frame.columns}
    return columns, [f"row {i + 1}" for i in range(len(frame))], names


def read_file(
    path,
    *,
    text_column="text",
    label_column="label",
    text_pair_column=None,
    encoding="utf-8",
    encoding_errors="strict",
    on_empty_text="drop",
):
    """Read examples from a CSV, TSV, JSON Lines or Parquet file.

    The format follows the extension: ``.csv``; ``.tsv`` or ``.tab``; ``.jsonl``, ``.ndjson``
    or ``.json`` (JSON Lines, or one JSON array of objects); ``.parquet`` or ``.pq``. Texts
    and text labels are stripped. CSV and TSV labels become ints only when every one is an
    integer written without leading zeros or a plus sign, otherwise they stay text as written
    (``007``, ``1e3``); JSON and Parquet labels keep their type. Errors name the file and the row: 1-based line numbers counting the
    header for text files, ``record N`` for a JSON array, ``row N`` for Parquet.

    Args:
        path: str. The file.
        text_column: str. The column (CSV, TSV, Parquet) or key (JSON) holding the text.
        label_column: str or None. The column holding the label; None reads texts only, and
            every label is None.
        text_pair_column: str or None. The column holding the second text of a sentence pair.
        encoding: str. The text encoding of CSV, TSV and JSON files; Parquet has its own.
        encoding_errors: str. ``strict`` fails on undecodable bytes; ``replace`` puts U+FFFD
            in their place and logs the count.
        on_empty_text: str. ``drop`` skips empty texts with a warning; ``error`` raises.

    Example:

    >>> read_file("reviews.tsv", text_column="body", label_column="stars").labels[:3]
    [5, 1, 4]
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        problem = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise DataError(f"The data file {path!r} {problem}.")
    extension = os.path.splitext(path)[1].lower()
    file_format = FORMATS.get(extension)
    if file_format is None:
        raise DataError(
            f"The data file {path!r} has the extension {extension!r}; use one of "
            f"{', '.join(FORMATS)} (CSV, TSV, JSON Lines, JSON or Parquet)."
        )

    available = None
    kind = "column"
    if file_format == "parquet":
        requested = [name for name in (text_column, label_column, text_pair_column) if name is not None]
        columns, rows, available = _read_parquet(path, requested)
    else:
        text = decode_file(path, encoding, encoding_errors)
        if file_format in DELIMITERS:
            columns, rows = _read_delimited(path, text, DELIMITERS[file_format], label_column)
        elif file_format == "json" and text.lstrip().startswith("["):
            columns, rows = _read_json_array(path, text)
            kind = "key"
        else:
            columns, rows = _read_json_lines(path, text)
            kind = "key"
    if label_column in columns:
        # " NEG" and "NEG" are one class; spaces around a label are a slip of the writer.
        columns[label_column] = [
            value.strip() if isinstance(value, str) else value for value in columns[label_column]
        ]

    return examples_from_columns(
        columns,
        rows,
        source=path,
        name=os.path.splitext(os.path.basename(path))[0],
        text_column=text_column,
        label_column=label_column,
        text_pair_column=text_pair_column,
        on_empty_text=on_empty_text,
        kind=kind,
        available=available,
    )
