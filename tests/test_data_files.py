"""Reading CSV, TSV, JSON Lines, JSON and Parquet files, encodings, and bad files on the CLI."""

import json
import logging
import os

import pandas as pd
import pytest

from tfpeft.cli import main
from tfpeft.data import read_file
from tfpeft.errors import DataError


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


def test_tsv_with_pairs_and_int_labels(tmp_path):
    path = write(tmp_path / "pairs.tsv", "premise\thypothesis\tlabel\na cat sits\tan animal sits\t1\n"
                 '"tab\tinside"\tsecond\t0\n')
    examples = read_file(path, text_column="premise", text_pair_column="hypothesis")
    assert examples.texts == ["a cat sits", "tab\tinside"]
    assert examples.text_pairs == ["an animal sits", "second"]
    assert examples.labels == [1, 0]
    assert examples.rows == ["line 2", "line 3"]


def test_csv_line_numbers_follow_multiline_fields(tmp_path):
    path = write(tmp_path / "multi.csv", 'text,label\n"first line\nsecond line",a\n\nplain,b\nlast,\n')
    with pytest.raises(DataError) as error:
        read_file(path)
    # The quoted field spans lines 2-3 and line 4 is blank, so the unlabelled row is line 6.
    assert str(error.value) == (
        f"{path}: 1 row without a label in column 'label' (line 6). Fill in or remove those rows."
    )
    ok = write(tmp_path / "multi_ok.csv", 'text,label\n"first line\nsecond line",a\n\nplain,b\n')
    examples = read_file(ok)
    assert examples.texts == ["first line\nsecond line", "plain"]
    assert examples.rows == ["line 2", "line 5"]


def test_jsonl_keeps_types_and_json_array(tmp_path):
    rows = [{"body": "vote party", "topic": 2}, {"body": "goal", "topic": 0.0}]
    path = write(tmp_path / "data.jsonl", "\n".join(json.dumps(row) for row in rows) + "\n\n")
    examples = read_file(path, text_column="body", label_column="topic")
    assert examples.labels == [2, 0]
    assert examples.column_kind == "key"
    array = write(tmp_path / "data.json", json.dumps(rows))
    assert read_file(array, text_column="body", label_column="topic").rows == ["record 1", "record 2"]


def test_parquet_rows_and_columns(tmp_path):
    path = str(tmp_path / "data.parquet")
    pd.DataFrame({"text": ["goal", " ", "chip"], "label": ["sport", "tech", "tech"], "extra": [1, 2, 3]}).to_parquet(path)
    examples = read_file(path)
    assert examples.texts == ["goal", "chip"]
    assert examples.rows == ["row 1", "row 3"]
    with pytest.raises(DataError, match=r"has no label column 'labels'\. Did you mean 'label'\? Its columns are: text, label, extra"):
        read_file(path, label_column="labels")


def test_utf8_byte_order_mark_accepted(tmp_path):
    path = write(tmp_path / "bom.csv", b"\xef\xbb\xbftext,label\ncaf\xc3\xa9,food\n")
    examples = read_file(path)
    assert examples.texts == ["café"]
    assert examples.labels == ["food"]


def test_invalid_utf8_names_offset_and_line(tmp_path):
    path = write(tmp_path / "latin.csv", b"text,label\ngoal,sport\ncaf\xe9 au lait,food\n")
    with pytest.raises(DataError) as error:
        read_file(path)
    message = str(error.value)
    assert f"The data file {path!r} is not valid utf-8: byte 0xe9 at byte offset 25 (line 3)" in message
    assert "--encoding latin-1" in message
    assert "--encoding-errors replace" in message
    assert read_file(path, encoding="latin-1").texts == ["goal", "café au lait"]


def test_encoding_errors_replace_logs_count(tmp_path, caplog):
    path = write(tmp_path / "mixed.csv", b"text,label\ncaf\xe9,food\nna\xefve \xff,food\nplain,food\n")
    with caplog.at_level(logging.WARNING, logger="tfpeft.data"):
        examples = read_file(path, encoding_errors="replace")
    assert examples.texts == ["caf\ufffd", "na\ufffdve \ufffd", "plain"]
    assert "replaced 3 characters that are not valid utf-8 with U+FFFD" in caplog.text
    assert "at line 2, line 3, line 3" in caplog.text


def test_tweets_builtin_equals_csv_path():
    from tfpeft.config import TrainingConfig
    from tfpeft.data.loading import load_splits
    from tfpeft.data.sources import tweets_file

    builtin = load_splits(TrainingConfig(dataset="tweets"))
    from_csv = load_splits(
        TrainingConfig(train_file=tweets_file(), encoding="latin-1", text_column="text", label_column="sentiment")
    )
    assert {name: len(split) for name, split in builtin.items()} == {"train": 30526, "validation": 3816, "test": 3816}
    for name in ("train", "validation", "test"):
        assert from_csv[name].fingerprint() == builtin[name].fingerprint()


# Each case: file name, file content, extra flags, and the texts the error must contain (the
# file path is checked separately). Every case must fail before a run folder exists.
BAD_FILES = [
    (
        "typo_text.csv", "txt,label\ngoal,sport\n", [],
        ["has no text column 'text'. Did you mean 'txt'? Its columns are: txt, label", "--text-column"],
    ),
    (
        "typo_label.csv", "text,lable\ngoal,sport\n", [],
        ["has no label column 'label'. Did you mean 'lable'?", "--label-column"],
    ),
    (
        "missing_labels.csv", "text,label\n" + "goal,sport\n" * 10 + "chip,\nvote, \n" + "phone,tech\n" * 10, [],
        ["2 rows without a label in column 'label' (line 12, line 13)"],
    ),
    (
        "nan_labels.jsonl", '{"text": "goal", "label": "sport"}\n{"text": "chip", "label": null}\n'
        '{"text": "vote", "label": NaN}\n', [],
        ["2 rows without a label in key 'label' (line 2, line 3)"],
    ),
    (
        "float_labels.csv", "text,score\ngoal,0.5\nchip,1\nvote,2.25\n", ["--label-column", "score"],
        ["column 'score' contains float values (0.5 at line 2, 2.25 at line 4)", "class name or an integer class id"],
    ),
    (
        "one_class.csv", "text,label\n" + "goal,sport\n" * 12, [],
        ["the training labels in column 'label' have 1 class ('sport' (12 rows))", "at least two"],
    ),
    (
        "rare_class.csv", "text,label\n" + "goal,sport\n" * 20 + "vote,politics\n" * 3, [],
        ["the classes {'politics': 3} in column 'label' have too few examples", "needs at least 10",
         "line 22, line 23, line 24"],
    ),
    (
        "empty_text.csv", "text,label\ngoal,sport\n   ,sport\nchip,tech\n,tech\n", ["--on-empty-text", "error"],
        ["2 rows with an empty or whitespace-only column 'text' (line 3, line 5)", "--on-empty-text drop"],
    ),
    (
        "latin1.csv", "text,label\ngoal,sport\ncafé,food\n".encode("latin-1"), [],
        ["is not valid utf-8: byte 0xe9 at byte offset 25 (line 3)", "--encoding latin-1"],
    ),
    (
        "extra_field.csv", "text,label\ngoal,sport\nred, green,colour\n", [],
        ["line 3: the row has 3 fields but the header has 2 (text, label)", "Quote fields"],
    ),
    (
        "broken.jsonl", '{"text": "goal", "label": "sport"}\n{"text": "chip", "label": "tech"\n', [],
        ["line 2: invalid JSON"],
    ),
    (
        "data.xlsx", "not a table", [],
        ["has the extension '.xlsx'; use one of .csv, .tsv"],
    ),
    (
        "pairs.csv", "text,label\ngoal,sport\n", ["--text-pair-column", "hypothesis"],
        ["has no text pair column 'hypothesis'", "--text-pair-column"],
    ),
]


@pytest.mark.parametrize("file_name, content, flags, expected", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_train_file_fails_before_run_folder(tmp_path, capsys, file_name, content, flags, expected):
    path = write(tmp_path / file_name, content)
    output_dir = tmp_path / "run"
    status = main(["train", "--train-file", path, "--output-dir", str(output_dir), "--quiet", *flags])
    error = capsys.readouterr().err
    assert status == 1
    assert error.startswith("tfpeft train: error: ")
    assert path in error
    for text in expected:
        assert text in error
    assert not output_dir.exists()


def test_unseen_test_label_fails_before_run_folder(tmp_path, capsys):
    train = write(tmp_path / "train.csv", "text,label\n" + "goal match,sport\nchip phone,tech\n" * 10)
    test = write(tmp_path / "test.csv", "text,label\ngoal,sport\ncup final,sports\nvote,politics\nteam,sports\n")
    output_dir = tmp_path / "run"
    status = main(["train", "--train-file", train, "--test-file", test, "--output-dir", str(output_dir), "--quiet"])
    error = capsys.readouterr().err
    assert status == 1
    assert f"{test}: 2 test labels in column 'label' never occur in the training data ({train})" in error
    assert "'politics' (1 row: line 4)" in error
    assert "'sports' (2 rows: line 3, line 5, did you mean 'sport'?)" in error
    assert "The training classes are: sport, tech" in error
    assert not output_dir.exists()


def test_test_file_without_labels_fails(tmp_path, capsys):
    train = write(tmp_path / "train.csv", "text,label\n" + "goal match,sport\nchip phone,tech\n" * 10)
    test = write(tmp_path / "unlabelled.csv", "text,label\ngoal,\nchip,\n")
    output_dir = tmp_path / "run"
    status = main(["train", "--train-file", train, "--test-file", test, "--output-dir", str(output_dir), "--quiet"])
    assert status == 1
    assert f"{test}: 2 rows without a label in column 'label' (line 2, line 3)" in capsys.readouterr().err
    assert not os.path.exists(output_dir)


def test_tweets_train_through_csv_and_builtin_name(tiny_bert_dir, tmp_path):
    from tfpeft.data.sources import tweets_file

    common = ["--model", tiny_bert_dir, "--num-train-epochs", "1", "--max-seq-length", "16",
              "--max-train-samples", "64", "--max-eval-samples", "32", "--quiet"]
    sources = {
        "builtin": ["--dataset", "tweets"],
        "csv": ["--train-file", tweets_file(), "--encoding", "latin-1", "--text-column", "text",
                "--label-column", "sentiment"],
    }
    results = {}
    for name, flags in sources.items():
        output_dir = tmp_path / name
        assert main(["train", *flags, *common, "--output-dir", str(output_dir)]) == 0
        results[name] = json.loads((output_dir / "results.json").read_text())
    assert results["csv"]["train_data_sha256"] == results["builtin"]["train_data_sha256"]
    assert results["csv"]["num_examples"] == results["builtin"]["num_examples"] == {
        "train": 64, "validation": 32, "test": 32,
    }
    assert results["csv"]["class_counts"] == results["builtin"]["class_counts"]


def test_labels_keep_their_spelling(tmp_path):
    path = write(tmp_path / "codes.csv", "text,label\na,007\nb,010\nc,1e3\nd,+5\ne,7\n")
    assert read_file(path).labels == ["007", "010", "1e3", "+5", "7"]
    plain = write(tmp_path / "ints.tsv", "text\tlabel\na\t-1\nb\t 10 \nc\t0\n")
    assert read_file(plain).labels == [-1, 10, 0]


def test_label_spaces_stripped_in_every_format(tmp_path):
    csv_path = write(tmp_path / "spaces.csv", 'text,label\na, NEG\nb,"NEG "\nc,neg\n')
    assert read_file(csv_path).labels == ["NEG", "NEG", "neg"]
    jsonl_path = write(tmp_path / "spaces.jsonl", '{"text": "a", "label": " NEG"}\n{"text": "b", "label": 3}\n')
    assert read_file(jsonl_path).labels == ["NEG", 3]


def test_extra_field_names_line(tmp_path):
    path = write(tmp_path / "extra.csv", "text,label\ngood text 0 a b,pos,src_b\nbad text,neg\n")
    with pytest.raises(DataError) as error:
        read_file(path)
    assert str(error.value) == (
        f"{path} line 2: the row has 3 fields but the header has 2 (text, label). Quote fields "
        'that contain a comma, e.g. "red, green".'
    )
