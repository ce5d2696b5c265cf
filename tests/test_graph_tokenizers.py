import random
import re
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfpeft.backbones import minilm_folder
from tfpeft.data import encode_texts, load_builtin
from tfpeft.errors import GraphTokenizerError
from tfpeft.graph_tokenizers import WordPieceGraphTokenizer, build_graph_tokenizer
from tfpeft.text_cleaning import clean_text_tensor, to_utf8

# Texts that reach every branch of the BERT normalizer and pre-tokenizer.
EDGE_TEXTS = [
    "",
    "   ",
    "goal match",
    "Café élève naïve Zürich ÅNGSTRÖM İstanbul ΟΔΟΣ straße ½ ² ﬁ µ",
    "北京欢迎你 and 東京 and 서울 and ｆｕｌｌｗｉｄｔｈ",
    "goal\x00match\x07 team\x85cup\u200bdata\u2028law\u00a0tax\ufeffvote",
    "tab\tnew\nline\r\nreturn",
    "punct!?.,;:'\"()[]{}<>@#$%^&*-_=+|\\/~`¿¡«»—–…",
    "emoji 😀👍🏽 👨‍👩‍👧 and ™ © ®",
    "literal [SEP] [CLS] [MASK] [PAD] [UNK] tokens",
    # The WordPiece limit is 100 characters, and 60 Cyrillic letters are 120 bytes.
    "x" * 100 + " " + "y" * 101 + " " + "é" * 101 + " " + "д" * 60 + " " + "д" * 101,
    "mojibake â€™ Ã© Ã¼ â€œquotedâ€\x9d",
    "\ufffd replacement \ufffd",
]
INVALID_UTF8 = [b"vote \xff\xfe party \xc3 tax\xe2\x82", b"\xed\xa0\x80 law", b"ok\xf0\x9f\x98"]


def as_utf8(texts):
    return tf.constant([text if isinstance(text, bytes) else to_utf8(text) for text in texts], dtype=tf.string)


def graph_ids(graph_tokenizer, texts, batch_size=2000, text_pairs=None):
    """Return the in-graph outputs as lists of rows, batch by batch."""
    rows = {}
    for start in range(0, len(texts), batch_size):
        inputs = [clean_text_tensor(as_utf8(texts[start : start + batch_size]))]
        if text_pairs is not None:
            inputs.append(clean_text_tensor(as_utf8(text_pairs[start : start + batch_size])))
        for name, value in graph_tokenizer(*inputs).items():
            rows.setdefault(name, []).extend(value.numpy())
    return rows


def assert_same_ids(graph_tokenizer, tokenizer, texts, max_seq_length, truncation="head", text_pairs=None):
    """Assert that the graph gives the ids, mask and segment ids of ``tfpeft.data.encode_texts``."""
    rows = graph_ids(graph_tokenizer, texts, text_pairs=text_pairs)
    encoded = encode_texts(tokenizer, texts, max_seq_length, truncation=truncation, text_pairs=text_pairs)
    assert ("token_type_ids" in rows) == (encoded.token_type_ids is not None)
    mismatches = []
    for i, (row, mask) in enumerate(zip(rows["input_ids"], rows["attention_mask"])):
        length = int(encoded.lengths[i])
        if int(mask.sum()) != length or row[:length].tolist() != encoded.input_ids[i, :length].tolist():
            mismatches.append(texts[i])
        elif mask[:length].min(initial=1) != 1 or (row[length:] != encoded.pad_token_id).any():
            mismatches.append(texts[i])
        elif "token_type_ids" in rows and rows["token_type_ids"][i][:length].tolist() != encoded.token_type_ids[i, :length].tolist():
            mismatches.append(texts[i])
    assert not mismatches, f"{len(mismatches)} of {len(texts)} texts differ, e.g. {mismatches[:3]!r}"


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert_dir)


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_folder())


def test_tiny_edge_texts_same_ids(tiny_tokenizer):
    graph_tokenizer = WordPieceGraphTokenizer(tiny_tokenizer, max_seq_length=16)
    assert_same_ids(graph_tokenizer, tiny_tokenizer, EDGE_TEXTS + INVALID_UTF8, max_seq_length=16)


def test_truncation_keeps_sep(tiny_tokenizer):
    graph_tokenizer = WordPieceGraphTokenizer(tiny_tokenizer, max_seq_length=8)
    outputs = graph_tokenizer(tf.constant(["goal match team coach league score player cup chip", "goal"]))
    input_ids, attention_mask = outputs["input_ids"], outputs["attention_mask"]
    assert input_ids.shape == (2, 8)
    assert input_ids.numpy()[0].tolist() == [2] + [tiny_tokenizer.convert_tokens_to_ids(w) for w in
                                                   "goal match team coach league score".split()] + [3]
    assert input_ids.numpy()[1].tolist() == [2, tiny_tokenizer.convert_tokens_to_ids("goal"), 3, 0, 0, 0, 0, 0]
    assert attention_mask.numpy().sum(axis=1).tolist() == [8, 3]


def test_empty_batch_has_special_token_width(tiny_tokenizer):
    graph_tokenizer = WordPieceGraphTokenizer(tiny_tokenizer, max_seq_length=8)
    outputs = graph_tokenizer(tf.constant([], dtype=tf.string))
    input_ids, attention_mask = outputs["input_ids"], outputs["attention_mask"]
    assert input_ids.shape == (0, 2)
    assert attention_mask.shape == (0, 2)


def test_max_seq_length_without_room_rejected(tiny_tokenizer):
    with pytest.raises(GraphTokenizerError, match="max_seq_length=2 leaves no room"):
        WordPieceGraphTokenizer(tiny_tokenizer, max_seq_length=2)


def test_slow_tokenizer_has_no_graph_form(tiny_bert_dir):
    from transformers import BertTokenizer

    with pytest.raises(GraphTokenizerError, match="BertTokenizer is a Python-only tokenizer"):
        build_graph_tokenizer(BertTokenizer.from_pretrained(tiny_bert_dir), 16)


def test_bpe_tokenizer_has_no_graph_form():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2, "<unk>": 3}, merges=[("a", "b")], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    with pytest.raises(GraphTokenizerError, match="uses a BPE model, which no TensorFlow Text op runs, and in-graph tokenizers exist only for: WordPiece, Unigram"):
        build_graph_tokenizer(tokenizer, 16)


def test_added_tokens_have_no_graph_form(tiny_bert_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    tokenizer.add_tokens(["goalmatch"])
    with pytest.raises(GraphTokenizerError, match=re.escape("added tokens ['goalmatch']")):
        build_graph_tokenizer(tokenizer, 16)


def test_minilm_edge_texts_same_ids(minilm_tokenizer):
    for max_seq_length in (8, 128):
        graph_tokenizer = WordPieceGraphTokenizer(minilm_tokenizer, max_seq_length)
        assert_same_ids(graph_tokenizer, minilm_tokenizer, EDGE_TEXTS + INVALID_UTF8, max_seq_length)


def test_minilm_every_code_point_same_ids(minilm_tokenizer):
    # Each code point between two letters, so that a dropped, split, isolated or rewritten
    # character shows in the ids: the Basic Multilingual Plane whole, the other planes sampled.
    code_points = list(range(0x10000)) + list(range(0x10000, sys.maxunicode + 1, 31))
    texts = [f"x{chr(c)}y" for c in code_points if not 0xD800 <= c <= 0xDFFF]
    graph_tokenizer = WordPieceGraphTokenizer(minilm_tokenizer, max_seq_length=16)
    assert_same_ids(graph_tokenizer, minilm_tokenizer, texts, max_seq_length=16)


def has_c1_control(text):
    return any(0x80 <= ord(char) <= 0x9F for char in text)


def test_minilm_bbc_and_tweets_same_ids(minilm_tokenizer):
    rng = random.Random(0)
    bbc = rng.sample(load_builtin("bbc_news").texts, 500)
    tweets = load_builtin("tweets").texts
    # Half of the tweets with C1 control characters, which come from mojibake such as
    # "Õ¢_\x8aÎ" in this latin-1 file, half drawn at random.
    with_controls = [text for text in tweets if has_c1_control(text)]
    sample = rng.sample(with_controls, 250) + rng.sample(tweets, 250)
    assert sum(has_c1_control(text) for text in sample) >= 250
    assert sum("Õ" in text for text in sample) >= 50

    for max_seq_length in (128, 4096):
        graph_tokenizer = WordPieceGraphTokenizer(minilm_tokenizer, max_seq_length)
        assert_same_ids(graph_tokenizer, minilm_tokenizer, bbc, max_seq_length)
        assert_same_ids(graph_tokenizer, minilm_tokenizer, sample, max_seq_length)


def test_minilm_truncation_length(minilm_tokenizer):
    graph_tokenizer = WordPieceGraphTokenizer(minilm_tokenizer, max_seq_length=32)
    outputs = graph_tokenizer(tf.constant([" ".join(["news"] * 3000), "news"]))
    input_ids, attention_mask = outputs["input_ids"], outputs["attention_mask"]
    ids = input_ids.numpy()
    assert ids.shape == (2, 32)
    assert ids[0, 0] == minilm_tokenizer.cls_token_id
    assert ids[0, -1] == minilm_tokenizer.sep_token_id
    np.testing.assert_array_equal(attention_mask.numpy().sum(axis=1), [32, 3])


def word_ids(tokenizer, words):
    return [tokenizer.convert_tokens_to_ids(word) for word in words.split()]


def test_tail_and_head_tail_keep_hand_counted_words(tiny_tokenizer):
    text = "goal match team coach league score player cup chip"
    # max_seq_length 8 leaves 6 of the 9 words between [CLS] and [SEP]; head_tail keeps
    # 6 // 4 = 1 word from the start and 5 from the end.
    expected = {
        "tail": "coach league score player cup chip",
        "head_tail": "goal league score player cup chip",
    }
    for truncation, words in expected.items():
        graph_tokenizer = WordPieceGraphTokenizer(tiny_tokenizer, max_seq_length=8, truncation=truncation)
        input_ids = graph_tokenizer(tf.constant([text]))["input_ids"].numpy()
        assert input_ids[0].tolist() == [2] + word_ids(tiny_tokenizer, words) + [3]


@pytest.mark.parametrize("truncation", ["head", "tail", "head_tail"])
def test_tiny_truncation_modes_same_ids(tiny_tokenizer, truncation):
    for max_seq_length in (5, 16):
        graph_tokenizer = WordPieceGraphTokenizer(tiny_tokenizer, max_seq_length, truncation=truncation)
        assert_same_ids(graph_tokenizer, tiny_tokenizer, EDGE_TEXTS + INVALID_UTF8, max_seq_length, truncation)


def test_tiny_pairs_same_ids(tiny_tokenizer):
    texts = EDGE_TEXTS + INVALID_UTF8
    # Every text paired with every fourth other one, so that short and long texts meet on
    # both sides and the shared budget is split in every way.
    pairs = [(first, second) for i, first in enumerate(texts) for second in texts[i % 4 :: 4]]
    firsts, seconds = [first for first, _ in pairs], [second for _, second in pairs]
    for truncation in ("head", "tail", "head_tail"):
        for max_seq_length in (7, 16):
            graph_tokenizer = WordPieceGraphTokenizer(tiny_tokenizer, max_seq_length, truncation=truncation, pairs=True)
            assert_same_ids(graph_tokenizer, tiny_tokenizer, firsts, max_seq_length, truncation, text_pairs=seconds)


def test_pair_segments_hand_counted(tiny_tokenizer):
    graph_tokenizer = WordPieceGraphTokenizer(tiny_tokenizer, max_seq_length=8, pairs=True)
    outputs = graph_tokenizer(tf.constant(["goal match team coach"]), tf.constant(["vote"]))
    # 5 word pieces fit between [CLS], [SEP] and [SEP]; the second text has 1, so the first
    # keeps 4.
    assert outputs["input_ids"].numpy()[0].tolist() == (
        [2] + word_ids(tiny_tokenizer, "goal match team coach") + [3] + word_ids(tiny_tokenizer, "vote") + [3]
    )
    assert outputs["token_type_ids"].numpy()[0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
