"""The text-cleaning rule that runs before every tokenizer, in Python and inside TF graphs.

Training, ``predict`` and an exported SavedModel must turn the same text into the same token
ids, so all of them clean text with this one rule before tokenizing:

1. Invalid UTF-8 becomes U+FFFD, one per maximal invalid subsequence, as Python's
   ``bytes.decode("utf-8", errors="replace")`` and ``tf.strings.unicode_decode(...,
   errors="replace")`` both do. Lone surrogates in a Python string (left by
   ``errors="surrogateescape"`` or a JSON ``\\ud800`` escape) count as the invalid bytes they
   stand for.
2. Control characters are dropped with the definition of BERT's Python tokenizer
   (``transformers`` ``BasicTokenizer``): every character whose Unicode general category
   starts with ``C`` (Cc, Cf, Cs, Co, Cn), except tab, line feed and carriage return.

``clean_text`` applies the rule to Python strings and ``clean_text_tensor`` to a string
tensor. Both use the ranges of ``control_ranges``, computed once from the ``unicodedata``
tables of the running Python. An exported graph keeps the ranges it was built with.
"""

import codecs
import functools
import re
import sys
import unicodedata

# Whitespace that BERT-style tokenizers treat as spaces even though it is category Cc.
KEPT_CONTROLS = frozenset("\t\n\r")
REPLACEMENT_CHARACTER = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def is_control(char):
    """Return True for a character the cleaning rule drops."""
    return char not in KEPT_CONTROLS and unicodedata.category(char).startswith("C")


@functools.lru_cache(maxsize=1)
def control_ranges():
    """Return the dropped code points as sorted, inclusive ``(first, last)`` pairs."""
    dropped = [is_control(chr(code_point)) for code_point in range(sys.maxunicode + 1)]
    ranges = []
    for code_point, drop in enumerate(dropped):
        if not drop:
            continue
        if ranges and ranges[-1][1] == code_point - 1:
            ranges[-1] = (ranges[-1][0], code_point)
        else:
            ranges.append((code_point, code_point))
    return tuple(ranges)


@functools.lru_cache(maxsize=1)
def _control_pattern():
    parts = [re.escape(chr(first)) if first == last else f"{re.escape(chr(first))}-{re.escape(chr(last))}"
             for first, last in control_ranges()]
    return re.compile("[" + "".join(parts) + "]")


def _encode_surrogates(error):
    # A surrogate from errors="surrogateescape" (U+DC80 to U+DCFF) stands for one raw byte and
    # becomes that byte again. Any other lone surrogate becomes the 3-byte sequence that
    # "surrogatepass" writes, which is invalid UTF-8 as well.
    chars = error.object[error.start:error.end]
    raw = b"".join(
        bytes([ord(char) - 0xDC00]) if 0xDC80 <= ord(char) <= 0xDCFF else char.encode("utf-8", "surrogatepass")
        for char in chars
    )
    return raw, error.end


codecs.register_error("tfpeft.surrogates", _encode_surrogates)


def to_utf8(text):
    """Encode a ``str`` as UTF-8, turning lone surrogates back into the bytes they stand for.

    Use it to send Python strings to a graph that applies ``clean_text_tensor``: a string read
    with ``errors="surrogateescape"`` gets its original invalid bytes back, which the graph then
    replaces with U+FFFD as ``clean_text`` does.
    """
    return text.encode("utf-8", errors="tfpeft.surrogates")


def clean_text(text):
    """Apply the cleaning rule to one text, a ``str`` or UTF-8 ``bytes``; return a ``str``.

    Example:

    >>> clean_text(b"caf\\xc3\\xa9\\x00 \\xff!")
    'café \\ufffd!'
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = str(text)
    if _SURROGATE.search(text):
        # The bytes the surrogates stand for decode to the same U+FFFD characters as the
        # original invalid UTF-8 would have.
        text = to_utf8(text).decode("utf-8", errors="replace")
    return _control_pattern().sub("", text)


def clean_texts(texts):
    """Apply ``clean_text`` to each text; return a list of ``str``."""
    return [clean_text(text) for text in texts]


def in_ranges(code_points, starts, ends):
    """Return a bool tensor: whether each int32 code point lies in one of the sorted ranges.

    Args:
        code_points: int32 tensor of any shape.
        starts, ends: int32 1-D tensors of the inclusive first and last code point of each
            range, sorted and not overlapping.
    """
    import tensorflow as tf

    index = tf.searchsorted(starts, tf.reshape(code_points, [-1]), side="right") - 1
    safe_index = tf.maximum(index, 0)
    inside = (index >= 0) & (tf.reshape(code_points, [-1]) <= tf.gather(ends, safe_index))
    return tf.reshape(inside, tf.shape(code_points))


def clean_text_tensor(texts):
    """Apply the cleaning rule to a string tensor of any shape, inside or outside a graph.

    Uses only core TensorFlow ops, so a SavedModel that calls it needs no extra op library.
    """
    import tensorflow as tf

    ranges = control_ranges()
    starts = tf.constant([first for first, _ in ranges], dtype=tf.int32)
    ends = tf.constant([last for _, last in ranges], dtype=tf.int32)

    texts = tf.convert_to_tensor(texts, dtype=tf.string)
    code_points = tf.strings.unicode_decode(
        tf.reshape(texts, [-1]), "UTF-8", errors="replace", replacement_char=ord(REPLACEMENT_CHARACTER)
    )
    keep = tf.logical_not(in_ranges(code_points.flat_values, starts, ends))
    kept = tf.ragged.boolean_mask(code_points, code_points.with_flat_values(keep))
    return tf.reshape(tf.strings.unicode_encode(kept, "UTF-8"), tf.shape(texts))
