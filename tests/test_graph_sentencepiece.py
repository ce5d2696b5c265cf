"""The in-graph SentencePiece tokenizers give the ids of the Python tokenizers used in training."""

import json
import sys

import numpy as np
import pytest
import tensorflow as tf

import tiny
from test_graph_tokenizers import EDGE_TEXTS, INVALID_UTF8, assert_same_ids, graph_ids
from tfpeft.errors import GraphTokenizerError
from tfpeft.graph_sentencepiece import SentencePieceGraphTokenizer
from tfpeft.graph_tokenizers import build_graph_tokenizer

FAMILIES = ("albert", "t5", "xlm-roberta", "deberta-v2")
TRUNCATIONS = ("head", "tail", "head_tail")

# Texts for the whitespace rules of the SentencePiece normalizers and Metaspace, the quote
# replacements and lowercasing of ALBERT, and the special pieces the Python Unigram model
# finds in plain text.
SENTENCEPIECE_TEXTS = [
    "  goal   match  ",
    " leading space",
    "trailing space ",
    "\u3000ideographic\u2003spaces\u3000",
    "``quoted'' and \"quoted\" text",
    "GOAL Match TEAM",
    "literal <s> </s> <pad> [CLS] [SEP] [MASK] x<s>y",
    "\ufffd goal \ufffd",
    "x \u1680\u2000\u2028\u202f\u3000\u00a0 y \u3000",
    " ".join(["goal", "match", "team"] * 1000),
]
HARD_TEXTS = EDGE_TEXTS + SENTENCEPIECE_TEXTS + INVALID_UTF8


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The tiny SentencePiece tokenizer of each family, saved and loaded as training loads it."""
    from transformers import AutoTokenizer

    loaded = {}
    for family in FAMILIES:
        scratch = tmp_path_factory.mktemp(f"spm_{family}")
        tiny.tiny_tokenizer(family, str(scratch)).save_pretrained(str(scratch / "saved"))
        loaded[family] = AutoTokenizer.from_pretrained(str(scratch / "saved"))
    return loaded


@pytest.mark.parametrize("family", FAMILIES)
def test_hard_texts_same_ids(tokenizers, family):
    tokenizer = tokenizers[family]
    for truncation in TRUNCATIONS:
        for max_seq_length in (6, 64):
            graph_tokenizer = build_graph_tokenizer(tokenizer, max_seq_length, truncation)
            assert isinstance(graph_tokenizer, SentencePieceGraphTokenizer)
            assert_same_ids(graph_tokenizer, tokenizer, HARD_TEXTS, max_seq_length, truncation)


@pytest.mark.parametrize("family", FAMILIES)
def test_code_points_same_ids(tokenizers, family):
    # Each sampled code point inside a word, at the start and at the end of a text, where the
    # whitespace rules differ between the families.
    code_points = [c for c in range(0, 0x10000, 13) if not 0xD800 <= c <= 0xDFFF]
    code_points += list(range(0x10000, sys.maxunicode + 1, 401))
    texts = [form.format(chr(c)) for c in code_points for form in ("x{}y", "{} a", "a {}")]
    graph_tokenizer = build_graph_tokenizer(tokenizers[family], max_seq_length=16)
    assert_same_ids(graph_tokenizer, tokenizers[family], texts, max_seq_length=16)


@pytest.mark.parametrize("family", ["albert", "xlm-roberta"])
def test_pairs_same_ids(tokenizers, family):
    tokenizer = tokenizers[family]
    texts = HARD_TEXTS[:-1]
    pairs = [(first, second) for i, first in enumerate(texts) for second in texts[i % 5 :: 5]]
    firsts, seconds = [first for first, _ in pairs], [second for _, second in pairs]
    for truncation in TRUNCATIONS:
        graph_tokenizer = build_graph_tokenizer(tokenizer, 12, truncation, pairs=True)
        assert_same_ids(graph_tokenizer, tokenizer, firsts, 12, truncation, text_pairs=seconds)


def test_xlm_roberta_ids_are_shifted_pieces(tokenizers):
    import sentencepiece

    tokenizer = tokenizers["xlm-roberta"]
    processor = sentencepiece.SentencePieceProcessor(model_file=tokenizer.vocab_file)
    pieces = processor.encode("goal match", out_type=int)
    rows = graph_ids(build_graph_tokenizer(tokenizer, 16), ["goal match"])
    # <s> the pieces, each one up, </s>; an unknown character becomes XLM-R's <unk>, id 3.
    assert rows["input_ids"][0].tolist() == [0] + [piece + 1 for piece in pieces] + [2]
    rows = graph_ids(build_graph_tokenizer(tokenizer, 16), ["ß"])
    assert rows["input_ids"][0].tolist() == [0, tokenizer.convert_tokens_to_ids("\u2581"), 3, 2]


def test_special_tokens_by_family(tokenizers):
    # The tiny T5 tokenizer adds no word-start prefix (Metaspace prepend_scheme "never"), so
    # its "goal" is spelled out in letters.
    expected = {
        "albert": ("[CLS]", ["\u2581goal"], "[SEP]"),
        "t5": (None, ["g", "o", "a", "l"], "</s>"),
        "xlm-roberta": ("<s>", ["\u2581goal"], "</s>"),
        "deberta-v2": ("[CLS]", ["\u2581goal"], "[SEP]"),
    }
    for family, (first, pieces, last) in expected.items():
        tokenizer = tokenizers[family]
        ids = graph_ids(build_graph_tokenizer(tokenizer, 16), ["goal"])["input_ids"][0].tolist()
        assert ids[-1] == tokenizer.convert_tokens_to_ids(last)
        if first is not None:
            assert ids[0] == tokenizer.convert_tokens_to_ids(first)
        assert tokenizer.convert_ids_to_tokens(ids[1 if first else 0 : -1]) == pieces


def test_albert_lowercases_and_strips_accents(tokenizers):
    tokenizer = tokenizers["albert"]
    graph_tokenizer = build_graph_tokenizer(tokenizer, 16)
    rows = graph_ids(graph_tokenizer, ["GOAL Mátch", "goal match"])
    np.testing.assert_array_equal(rows["input_ids"][0], rows["input_ids"][1])


def with_backend_setting(tokenizer, key, value):
    """Return a copy of ``tokenizer`` whose backend has ``key`` replaced by ``value``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    settings = json.loads(tokenizer.backend_tokenizer.to_str())
    settings[key] = value
    copy = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    copy._tokenizer = Tokenizer.from_str(json.dumps(settings))
    assert isinstance(copy, PreTrainedTokenizerFast)
    return copy


def test_unsupported_parts_raise(tokenizers):
    tokenizer = tokenizers["xlm-roberta"]
    nfc = with_backend_setting(tokenizer, "normalizer", {"type": "NFC"})
    with pytest.raises(GraphTokenizerError, match="its normalizer NFC has no single Precompiled map"):
        build_graph_tokenizer(nfc, 16)
    metaspace = json.loads(tokenizer.backend_tokenizer.to_str())["pre_tokenizer"]
    first = with_backend_setting(tokenizer, "pre_tokenizer", dict(metaspace, prepend_scheme="first"))
    with pytest.raises(GraphTokenizerError, match="prepend_scheme='first' is not supported"):
        build_graph_tokenizer(first, 16)
    whitespace = with_backend_setting(tokenizer, "pre_tokenizer", {"type": "WhitespaceSplit"})
    with pytest.raises(GraphTokenizerError, match="its pre-tokenizer WhitespaceSplit is not a single Metaspace"):
        build_graph_tokenizer(whitespace, 16)


def tokenize_with(graph_tokenizer):
    from tfpeft.text_cleaning import clean_text_tensor

    def tokenize(texts):
        return graph_tokenizer(clean_text_tensor(texts))

    return tokenize


def test_saved_and_loaded_tokenizers_keep_their_models(tokenizers, tmp_path):
    # The T5 and ALBERT tokenizers run three variants of their models each. After loading, each
    # op must still find its own variant, also with two SavedModels loaded in one process.
    from test_graph_tokenizers import as_utf8

    expected, loaded = {}, {}
    for family in ("t5", "albert"):
        graph_tokenizer = build_graph_tokenizer(tokenizers[family], 64)
        module = tf.Module()
        module.graph_tokenizer = graph_tokenizer
        module.tokenize = tf.function(
            tokenize_with(graph_tokenizer), input_signature=[tf.TensorSpec([None], tf.string)]
        )
        tf.saved_model.save(module, str(tmp_path / family))
        expected[family] = graph_ids(graph_tokenizer, HARD_TEXTS)["input_ids"]
    for family in ("t5", "albert"):
        loaded[family] = tf.saved_model.load(str(tmp_path / family))
    for family, model in loaded.items():
        input_ids = model.tokenize(as_utf8(HARD_TEXTS))["input_ids"].numpy()
        np.testing.assert_array_equal(input_ids, np.array(expected[family]))


@pytest.mark.parametrize("family", FAMILIES)
def test_bbc_and_tweets_same_ids(tokenizers, family):
    import random

    from test_graph_tokenizers import has_c1_control
    from tfpeft.data import load_builtin

    rng = random.Random(0)
    tweets = load_builtin("tweets").texts
    texts = rng.sample(load_builtin("bbc_news").texts, 100)
    texts += rng.sample([text for text in tweets if has_c1_control(text)], 100) + rng.sample(tweets, 100)
    graph_tokenizer = build_graph_tokenizer(tokenizers[family], 128, "head_tail")
    assert_same_ids(graph_tokenizer, tokenizers[family], texts, 128, "head_tail")
