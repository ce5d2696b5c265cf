import collections
import json

import numpy as np
import pytest

import tfpeft
from tfpeft.data import LabelMap, encode_texts, load_builtin, make_dataset, read_file, split_examples
from tfpeft.data.sources import TextExamples
from tfpeft.errors import DataError


def test_read_csv_strips_and_drops_empty(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('text,label\n"  goal match  ",sport\n"   ",tech\n,tech\nchip phone,tech\n', encoding="utf-8")
    examples = read_file(str(path))
    assert examples.texts == ["goal match", "chip phone"]
    assert examples.labels == ["sport", "tech"]
    assert examples.rows == ["line 2", "line 5"]
    assert examples.locations() == [f"{path} line 2", f"{path} line 5"]


def test_read_jsonl_custom_columns(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"body": "vote party", "topic": 2}, {"body": "goal", "topic": 0}]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    examples = read_file(str(path), text_column="body", label_column="topic")
    assert examples.texts == ["vote party", "goal"]
    assert examples.labels == [2, 0]


def test_missing_column_suggests_closest(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,lable\ngoal,sport\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_file(str(path))
    message = str(error.value)
    assert "no label column 'label'" in message
    assert "Did you mean 'lable'?" in message
    assert "text, lable" in message
    assert str(path) in message


def test_missing_label_names_rows(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\ngoal,sport\nchip,\nvote,politics\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.csv: 1 row without a label in column 'label' \(line 3\)"):
        read_file(str(path))


def test_invalid_utf8_suggests_encoding(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"text,label\ncaf\xe9,food\n")
    with pytest.raises(DataError, match=r"not valid utf-8: byte 0xe9 at byte offset 14 \(line 2\).*--encoding latin-1"):
        read_file(str(path))
    assert read_file(str(path), encoding="latin-1").texts == ["café"]


def test_label_map_orders_and_encodes():
    label_map = LabelMap.from_labels(["tech", "sport", "tech", "politics"])
    assert label_map.names == ["politics", "sport", "tech"]
    assert label_map.encode(["tech", "politics"]) == [2, 0]
    assert label_map.decode([1, 2]) == ["sport", "tech"]
    assert LabelMap.from_labels([10, 2, 2]).names == ["2", "10"]


def test_label_map_unknown_label_names_row():
    label_map = LabelMap(["sport", "tech"])
    with pytest.raises(DataError, match=r"'politics' at test\.csv line 4 is not one of the training classes"):
        label_map.encode(["sport", "politics"], rows=["test.csv line 3", "test.csv line 4"])


def test_label_map_round_trip(tmp_path):
    label_map = LabelMap(["b", "a", "ç"])
    label_map.save(tmp_path / "label_map.json")
    assert LabelMap.load(tmp_path / "label_map.json") == label_map


def test_split_is_stratified_80_10_10_and_seeded():
    texts = [f"text {i}" for i in range(200)]
    labels = ["a"] * 100 + ["b"] * 60 + ["c"] * 40
    examples = TextExamples(texts, labels, "toy")
    splits = split_examples(examples, seed=7)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (160, 20, 20)
    assert collections.Counter(splits.test.labels) == {"a": 10, "b": 6, "c": 4}
    assert collections.Counter(splits.train.labels) == {"a": 80, "b": 48, "c": 32}
    all_texts = splits.train.texts + splits.validation.texts + splits.test.texts
    assert sorted(all_texts) == sorted(texts)
    assert split_examples(examples, seed=7).test.texts == splits.test.texts
    assert split_examples(examples, seed=8).test.texts != splits.test.texts


def test_split_fractions_rule_matches_config():
    examples = TextExamples([f"text {i}" for i in range(20)], ["a", "b"] * 10, "toy")
    splits = split_examples(examples, validation_fraction=0.0, test_fraction=0.0)
    assert splits.train.texts == examples.texts
    assert (splits.validation, splits.test) == (None, None)
    with pytest.raises(DataError) as error:
        split_examples(examples, validation_fraction=0.5, test_fraction=0.5)
    assert str(error.value) == (
        "validation_fraction + test_fraction must be in [0, 1); got 0.5 + 0.5. Use fractions "
        "that add up to less than 1."
    )


def test_split_rejects_rare_class():
    examples = TextExamples(["x"] * 30 + ["y"] * 3, ["a"] * 30 + ["b"] * 3, "toy")
    with pytest.raises(DataError, match=r"\{'b': 3\} have too few examples .* at least 10"):
        split_examples(examples)


def test_split_rejects_single_class():
    with pytest.raises(DataError, match="at least two classes"):
        split_examples(TextExamples(["x"] * 20, ["a"] * 20, "toy"))


def test_encode_truncates_to_max_seq_length(tiny_bert_dir):
    tokenizer = tfpeft.load_backbone(tiny_bert_dir).tokenizer
    encoded = encode_texts(tokenizer, ["goal " * 50, "chip phone"], max_seq_length=8)
    assert encoded.lengths.tolist() == [8, 4]
    assert encoded.input_ids.shape == (2, 8)
    assert encoded.input_ids[0, -1] == tokenizer.sep_token_id
    assert encoded.input_ids[1].tolist()[4:] == [tokenizer.pad_token_id] * 4


def test_dataset_pads_per_batch(tiny_bert_dir):
    tokenizer = tfpeft.load_backbone(tiny_bert_dir).tokenizer
    texts = ["goal", "chip phone robot", "goal match team coach league score player cup", "vote"]
    encoded = encode_texts(tokenizer, texts, max_seq_length=32)
    batches = list(make_dataset(encoded, [0, 1, 2, 0], batch_size=2))
    first_features, first_labels = batches[0]
    assert first_features["input_ids"].shape == (2, 5)  # "chip phone robot" + [CLS] [SEP]
    assert first_features["attention_mask"].numpy().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert first_labels.numpy().tolist() == [0, 1]
    assert batches[1][0]["input_ids"].shape == (2, 10)


def test_dataset_shuffle_is_seeded(tiny_bert_dir):
    tokenizer = tfpeft.load_backbone(tiny_bert_dir).tokenizer
    encoded = encode_texts(tokenizer, ["goal"] * 32, max_seq_length=8)
    labels = list(range(32))

    def order(seed):
        dataset = make_dataset(encoded, labels, batch_size=32, shuffle=True, seed=seed)
        return next(iter(dataset))[1].numpy().tolist()

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == labels


def test_builtin_bbc_news():
    examples = load_builtin("bbc_news")
    assert len(examples) == 2225
    assert collections.Counter(examples.labels) == {
        "business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401,
    }
    assert any("£" in text for text in examples.texts)


def test_builtin_tweets_latin1():
    examples = load_builtin("tweets")
    assert len(examples) == 38158
    assert collections.Counter(examples.labels) == {"negative": 16186, "neutral": 15018, "positive": 6954}


def test_unknown_builtin_suggests():
    with pytest.raises(DataError, match="Did you mean 'bbc_news'"):
        load_builtin("bbc-news")


def test_fingerprint_changes_with_data():
    a = TextExamples(["x", "y"], ["a", "b"], "toy")
    b = TextExamples(["x", "y"], ["a", "a"], "toy")
    assert a.fingerprint() == TextExamples(["x", "y"], ["a", "b"], "other").fingerprint()
    assert a.fingerprint() != b.fingerprint()
    assert np.char.str_len(a.fingerprint()) == 64
