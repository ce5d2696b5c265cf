import sys
import unicodedata

import numpy as np
import tensorflow as tf

from tfpeft.data import encode_texts
from tfpeft.text_cleaning import clean_text, clean_text_tensor, clean_texts, control_ranges, to_utf8

# Invalid UTF-8 of every kind Python's decoder names: a stray continuation byte, a truncated
# sequence, an overlong encoding, an encoded surrogate, a code point above U+10FFFF, a 5-byte
# lead byte, and a truncated 4-byte sequence at the end.
INVALID_UTF8 = [
    b"chip \x80 phone",
    b"\xe2\x82a",
    b"\xc0\x80x",
    b"\xed\xa0\x80y",
    b"\xf4\x90\x80\x80z",
    b"ab\xf8\x88\x80\x80\x80cd",
    b"caf\xc3\xa9 \xe9t\xe9",
    b"ok\xf0\x9f\x98",
]


def test_control_characters_dropped():
    text = "a\x00b\x07c\x1bd\x7fe\x85f\x9fg\u200bh\u2066i\ufeffj\ue000k\U000f0000l"
    assert clean_text(text) == "abcdefghijkl"


def test_tab_newline_return_kept():
    assert clean_text("goal\tmatch\nteam\r\ncup") == "goal\tmatch\nteam\r\ncup"


def test_accents_and_symbols_kept():
    text = "Café ß ½ 北京 😀 \ufffd \u00a0 \u2028"
    assert clean_text(text) == text


def test_invalid_bytes_become_replacement_characters():
    assert clean_text(b"caf\xc3\xa9\x00 \xff!") == "café \ufffd!"
    for raw in INVALID_UTF8:
        assert clean_text(raw) == raw.decode("utf-8", errors="replace")


def test_surrogate_escapes_count_as_their_bytes():
    for raw in INVALID_UTF8:
        escaped = raw.decode("utf-8", errors="surrogateescape")
        assert clean_text(escaped) == raw.decode("utf-8", errors="replace")
        assert to_utf8(escaped) == raw


def test_lone_surrogate_is_invalid_utf8():
    # "\ud800" written as UTF-8 is the 3 invalid bytes ED A0 80, each replaced.
    assert clean_text("a\ud800b") == "a\ufffd\ufffd\ufffdb"


def test_non_strings_converted():
    assert clean_texts([3, None]) == ["3", "None"]


def test_control_ranges_match_unicodedata():
    dropped = {code_point for first, last in control_ranges() for code_point in range(first, last + 1)}
    expected = {
        code_point
        for code_point in range(sys.maxunicode + 1)
        if chr(code_point) not in "\t\n\r" and unicodedata.category(chr(code_point)).startswith("C")
    }
    assert dropped == expected
    assert 0x85 in dropped
    assert 0x9 not in dropped


def test_tensor_cleaning_equals_python_on_every_bmp_character():
    # Surrogates cannot be written as valid UTF-8, so they go in as the invalid bytes tests.
    chars = [chr(c) for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    texts = [f"x{''.join(chars[i:i + 64])}y".encode("utf-8") for i in range(0, len(chars), 64)]
    texts += INVALID_UTF8 + [b"", "tab\there\x85".encode("utf-8")]
    cleaned = [text.decode("utf-8") for text in clean_text_tensor(tf.constant(texts)).numpy()]
    assert cleaned == [clean_text(text) for text in texts]


def test_tensor_cleaning_keeps_shape():
    cleaned = clean_text_tensor(tf.constant([[b"a\x01"], [b""]]))
    assert cleaned.shape == (2, 1)
    assert cleaned.numpy().tolist() == [[b"a"], [b""]]
    assert clean_text_tensor(tf.constant(b"x\x01y")).numpy() == b"xy"


def test_encode_texts_cleans_bytes_and_escapes(tiny_bert_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    encoded = encode_texts(tokenizer, [b"goal\x07 match \xff team", "goal match team"], max_seq_length=16)
    # The invalid byte becomes U+FFFD, which the BERT tokenizer drops like a control character.
    assert encoded.lengths.tolist() == [5, 5]
    np.testing.assert_array_equal(encoded.input_ids[0], encoded.input_ids[1])


def test_encode_texts_splits_special_token_strings(tiny_bert_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    encoded = encode_texts(tokenizer, ["goal [SEP] match"], max_seq_length=16)
    ids = encoded.input_ids[0, : encoded.lengths[0]].tolist()
    # A literal [SEP] in the text is "[", "sep", "]" (unknown in the tiny vocabulary), not id 3.
    assert ids[0] == tokenizer.cls_token_id
    assert ids[-1] == tokenizer.sep_token_id
    assert tokenizer.sep_token_id not in ids[1:-1]
    assert len(ids) == 7
