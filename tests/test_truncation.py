"""Truncation rules: the kept token ids are slices of the full tokenization."""

import logging

import numpy as np
import pytest
from transformers import BertTokenizer

import tfpeft
from tfpeft.data import encode_texts
from tfpeft.data.truncation import share_budget

LONG_TEXT = " ".join(["goal", "match", "team", "coach", "league", "score", "player", "cup"] * 3)  # 24 pieces


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    return tfpeft.load_backbone(tiny_bert_dir).tokenizer


def kept_ids(encoded, row=0):
    return encoded.input_ids[row, : encoded.lengths[row]].tolist()


@pytest.mark.parametrize(
    "truncation, expected_slice",
    [
        ("head", lambda pieces: pieces[:10]),
        ("tail", lambda pieces: pieces[-10:]),
        # A quarter of the 10-piece budget (2) from the start, the other 8 from the end.
        ("head_tail", lambda pieces: pieces[:2] + pieces[-8:]),
    ],
)
def test_single_text_keeps_expected_slice(tokenizer, truncation, expected_slice):
    full = tokenizer(LONG_TEXT)["input_ids"]
    assert len(full) == 26
    pieces = full[1:-1]
    encoded = encode_texts(tokenizer, [LONG_TEXT, "goal"], max_seq_length=12, truncation=truncation)
    assert kept_ids(encoded) == [tokenizer.cls_token_id] + expected_slice(pieces) + [tokenizer.sep_token_id]
    assert kept_ids(encoded, 1) == tokenizer("goal")["input_ids"]
    assert encoded.full_lengths.tolist() == [26, 3]


def test_head_equals_tokenizer_truncation(tokenizer):
    texts = [LONG_TEXT, "chip phone", "vote " * 40]
    encoded = encode_texts(tokenizer, texts, max_seq_length=9)
    expected = tokenizer(texts, truncation=True, max_length=9)["input_ids"]
    assert [kept_ids(encoded, i) for i in range(3)] == expected


@pytest.mark.parametrize("truncation", ["head", "tail", "head_tail"])
def test_pair_keeps_expected_slices(tokenizer, truncation):
    first = " ".join(["goal", "match", "team", "coach", "league"] * 2)  # 10 pieces
    second = "chip phone robot laptop"  # 4 pieces
    full = tokenizer(first, second)
    first_pieces, second_pieces = full["input_ids"][1:11], full["input_ids"][12:16]
    # max_seq_length 12 leaves 9 pieces after [CLS] [SEP] [SEP]: the 4-piece text fits in half
    # the budget and stays whole, the other keeps 5.
    keep_first = {"head": first_pieces[:5], "tail": first_pieces[-5:], "head_tail": first_pieces[:1] + first_pieces[-4:]}
    encoded = encode_texts(tokenizer, [first], max_seq_length=12, text_pairs=[second], truncation=truncation)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert kept_ids(encoded) == [cls] + keep_first[truncation] + [sep] + second_pieces + [sep]
    assert encoded.token_type_ids[0].tolist() == [0] * 7 + [1] * 5
    assert encoded.full_lengths.tolist() == [17]


def test_pair_head_equals_tokenizer_longest_first(tokenizer):
    rng = np.random.default_rng(0)
    words = ["goal", "chip", "vote", "law", "team", "data"]
    texts = [" ".join(rng.choice(words, rng.integers(1, 20))) for _ in range(60)]
    pairs = [" ".join(rng.choice(words, rng.integers(1, 20))) for _ in range(60)]
    for max_seq_length in (5, 8, 13, 24):
        encoded = encode_texts(tokenizer, texts, max_seq_length, text_pairs=pairs)
        expected = tokenizer(texts, pairs, truncation=True, max_length=max_seq_length)
        assert [kept_ids(encoded, i) for i in range(60)] == expected["input_ids"]
        type_ids = [encoded.token_type_ids[i, : encoded.lengths[i]].tolist() for i in range(60)]
        assert type_ids == expected["token_type_ids"]


def test_share_budget_cases():
    assert share_budget(3, 4, 10) == (3, 4)
    assert share_budget(10, 4, 9) == (5, 4)
    assert share_budget(10, 10, 9) == (4, 5)
    assert share_budget(3, 20, 9) == (3, 6)


@pytest.mark.parametrize("truncation", ["head", "tail", "head_tail"])
def test_python_tokenizer_matches_fast(tiny_bert_dir, tokenizer, truncation):
    slow = BertTokenizer.from_pretrained(tiny_bert_dir)
    assert not slow.is_fast
    texts, pairs = [LONG_TEXT, "goal", "vote " * 9], ["chip phone " * 5, "law", "tax"]
    for text_pairs in (None, pairs):
        fast_encoded = encode_texts(tokenizer, texts, 11, text_pairs=text_pairs, truncation=truncation)
        slow_encoded = encode_texts(slow, texts, 11, text_pairs=text_pairs, truncation=truncation)
        np.testing.assert_array_equal(slow_encoded.input_ids, fast_encoded.input_ids)
        np.testing.assert_array_equal(slow_encoded.full_lengths, fast_encoded.full_lengths)
        if text_pairs is not None:
            np.testing.assert_array_equal(slow_encoded.token_type_ids, fast_encoded.token_type_ids)


def test_truncation_share_logged_with_percentiles(tokenizer, caplog):
    from tfpeft.data.truncation import log_truncation

    texts = ["goal", "goal match team", LONG_TEXT, "vote " * 40]
    encoded = encode_texts(tokenizer, texts, max_seq_length=6)
    assert encoded.full_lengths.tolist() == [3, 5, 26, 42]
    with caplog.at_level(logging.INFO, logger="tfpeft.data"):
        summary = log_truncation("train split", encoded.full_lengths, 6, "head")
    assert summary["num_truncated"] == 2
    assert summary["p50"] == int(np.ceil(np.percentile([3, 5, 26, 42], 50))) == 16
    assert summary["max"] == 42
    record = caplog.records[-1]
    assert record.levelno == logging.INFO
    assert "train split: 2 of 4 texts (50.0%) are longer than max_seq_length=6 tokens" in record.getMessage()
    assert "p50 16, p90 38, p95 40, p99 42, max 42" in record.getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tfpeft.data"):
        log_truncation("test split", encoded.full_lengths, 4, "tail")
    assert caplog.records[-1].levelno == logging.WARNING
    assert "3 of 4 texts (75.0%)" in caplog.text
    assert "consider a larger --max-seq-length or --truncation head_tail" in caplog.text
