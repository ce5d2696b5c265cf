"""In-graph tokenizers: a run's Python tokenizer rebuilt from TensorFlow ops, for serving.

An exported SavedModel takes raw text, so its graph must turn text into the same token ids as
the Hugging Face tokenizer used in training. ``build_graph_tokenizer`` picks the in-graph form
from ``GRAPH_TOKENIZERS`` by the kind of the tokenizer's model (``WordPiece``, ``BPE``,
``Unigram``). A tokenizer it cannot rebuild raises ``GraphTokenizerError`` with the reason,
and the export then serves token ids only.

WordPiece (BERT, MiniLM, ELECTRA): the Hugging Face normalizer (cleaning, Chinese-character
padding, accent stripping, lowercasing) and the BERT pre-tokenizer (whitespace and punctuation
splits) map each character on its own, whatever its neighbours. Their effect is therefore read
off once by running them on every Unicode code point, and compiled into range tables
(``CharacterMap``) that core TF ops apply. TensorFlow Text's ``FastWordpieceTokenizer`` then
splits the words into pieces of the run's vocabulary.
"""

import dataclasses
import json
import sys

import tensorflow as tf

from tfpeft.errors import GraphTokenizerError

# Kinds of CharacterMap ranges: what a code point becomes after normalizing and pre-tokenizing.
KEEP = 0  # itself
DROP = 1  # nothing
SPLIT = 2  # a word boundary (whitespace)
ISOLATE = 3  # a word of its own (punctuation, Chinese characters)
REPLACE = 4  # another string, looked up in the replacement table (lowercase, accents stripped)

# Normalizers and pre-tokenizers of the `tokenizers` library that act on each character alone.
# NFC and NFKC compose neighbouring characters, and the `Whitespace` pre-tokenizer keeps runs
# of punctuation together, so neither is in these sets.
# NOTE: NFD also reorders adjacent combining marks by combining class. Accent stripping drops
# the nonspacing ones, so only two or more adjacent spacing marks with a nonzero class (a few
# musical symbols, U+1D165 to U+1D172) can come out in another order than the graph gives.
PER_CHARACTER_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFD", "StripAccents"}
PER_CHARACTER_PRE_TOKENIZERS = {"BertPreTokenizer", "WhitespaceSplit"}

# The Python tokenizer's WordPiece limit counts characters, but the TF Text op counts bytes. A
# character is at most 4 bytes of UTF-8.
MAX_UTF8_BYTES_PER_CHAR = 4


@dataclasses.dataclass(frozen=True)
class CharacterMap:
    """The output of normalizing and pre-tokenizing each code point, as sorted range tables.

    Args:
        starts: tuple of int. The first code point of each range, ascending from 0.
        kinds: tuple of int. The kind of each range: ``KEEP``, ``DROP``, ``SPLIT``,
            ``ISOLATE`` or ``REPLACE``.
        replaced: tuple of int. The code points of kind ``REPLACE``, ascending.
        replacements: tuple of str. What each of ``replaced`` becomes, with a space around
            each word boundary.
    """

    starts: tuple
    kinds: tuple
    replaced: tuple
    replacements: tuple

    @classmethod
    def probe(cls, normalizer, pre_tokenizer):
        """Build the map by running a `tokenizers` normalizer and pre-tokenizer on every code point."""
        code_points = [c for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
        if normalizer is None:
            normalized = [chr(c) for c in code_points]
        else:
            normalized = [normalizer.normalize_str(chr(c)) for c in code_points]
        boundary = _pre_tokenized_chars(pre_tokenizer, list(set("".join(normalized)) | {" "}))
        if boundary[" "] != " ":
            raise GraphTokenizerError("the pre-tokenizer does not split words on spaces")

        starts, kinds, replaced, replacements = [], [], [], []
        previous = -1
        for code_point, piece in zip(code_points, normalized):
            if code_point != previous + 1:
                # The surrogates, which never come out of UTF-8 decoding.
                starts.append(previous + 1)
                kinds.append(DROP)
            previous = code_point
            char = chr(code_point)
            output = "".join(boundary[part] for part in piece)
            kind = _kind(char, output)
            if kind == REPLACE:
                replaced.append(code_point)
                replacements.append(output)
            if not kinds or kinds[-1] != kind:
                starts.append(code_point)
                kinds.append(kind)
        return cls(tuple(starts), tuple(kinds), tuple(replaced), tuple(replacements))

    def split_words(self, texts):
        """Normalize and pre-tokenize a 1-D string tensor into a ragged ``[batch, words]`` tensor."""
        starts = tf.constant(self.starts, dtype=tf.int32)
        kinds = tf.constant(self.kinds, dtype=tf.int32)
        replaced = tf.constant(self.replaced, dtype=tf.int32)
        # One extra entry, so that a lookup past the last replaced code point stays in range.
        replacements = tf.constant(self.replacements + ("",), dtype=tf.string)

        code_points = tf.strings.unicode_decode(texts, "UTF-8", errors="replace")
        flat = code_points.flat_values
        kind = tf.gather(kinds, tf.searchsorted(starts, flat, side="right") - 1)
        chars = tf.strings.unicode_encode(tf.expand_dims(flat, -1), "UTF-8")
        replacement = tf.gather(replacements, tf.searchsorted(replaced, flat, side="left"))

        outputs = tf.where(kind == KEEP, chars, "")
        outputs = tf.where(kind == SPLIT, " ", outputs)
        outputs = tf.where(kind == ISOLATE, tf.strings.join([" ", chars, " "]), outputs)
        outputs = tf.where(kind == REPLACE, replacement, outputs)
        joined = tf.strings.reduce_join(code_points.with_flat_values(outputs), axis=-1)

        words = tf.strings.split(joined, sep=" ")
        return tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)


def _pre_tokenized_chars(pre_tokenizer, chars):
    """Return what pre-tokenizing makes of each char: itself, a space, or itself between spaces.

    All chars go through the pre-tokenizer in one string, each between two letters, and the
    piece covering a char shows its kind. No piece covers a separator, a piece of its own
    covers a char that is a word alone (punctuation), and a longer piece covers a word character.
    """
    if [piece for piece, _ in pre_tokenizer.pre_tokenize_str("ab")] != ["ab"]:
        raise GraphTokenizerError("the pre-tokenizer splits the letters of 'ab'")
    text = "a" + "a".join(chars) + "a"
    covering_length = [0] * len(text)
    for piece, (start, end) in pre_tokenizer.pre_tokenize_str(text):
        if piece != text[start:end]:
            raise GraphTokenizerError(f"the pre-tokenizer rewrites {text[start:end]!r} as {piece!r}")
        covering_length[start:end] = [end - start] * (end - start)

    result = {}
    for i, char in enumerate(chars):
        length = covering_length[2 * i + 1]
        if length == 0:
            result[char] = " "
        elif length == 1:
            result[char] = f" {char} "
        else:
            result[char] = char
    return result


def _kind(char, output):
    if output == char:
        return KEEP
    if output == "":
        return DROP
    if output == " ":
        return SPLIT
    if output == f" {char} ":
        return ISOLATE
    return REPLACE


_CHARACTER_MAPS = {}


def _character_map(backend):
    # Probing every code point takes seconds, so each distinct normalizer and pre-tokenizer is
    # probed once per process.
    settings = json.loads(backend.to_str())
    key = json.dumps([settings.get("normalizer"), settings.get("pre_tokenizer")], sort_keys=True)
    if key not in _CHARACTER_MAPS:
        _CHARACTER_MAPS[key] = CharacterMap.probe(backend.normalizer, backend.pre_tokenizer)
    return _CHARACTER_MAPS[key]


def _component_types(component):
    """Return the type names in a normalizer or pre-tokenizer setting, looking inside Sequences."""
    if component is None:
        return []
    if component["type"] == "Sequence":
        inner = component.get("normalizers") or component.get("pretokenizers") or []
        return [name for part in inner for name in _component_types(part)]
    return [component["type"]]


def special_token_ids(tokenizer):
    """Return ``(prefix, suffix)``: the ids the tokenizer adds before and after one text."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise GraphTokenizerError(f"its special tokens {full} do not surround the text's ids {plain}")


class WordPieceGraphTokenizer(tf.Module):
    """A WordPiece tokenizer (BERT family) as TF ops, with the Python tokenizer's exact ids.

    Takes a 1-D string tensor of texts already cleaned by ``clean_text_tensor`` and returns
    ``input_ids`` and ``attention_mask``, int32 ``[batch, length]``: the special tokens around
    each text, truncated to ``max_seq_length`` by keeping the first tokens, right-padded to
    the longest text of the batch. These are the ids ``tfpeft.data.encode_texts`` gives.

    Args:
        tokenizer: a transformers fast tokenizer whose model is WordPiece.
        max_seq_length: int. Maximum tokens per text, special tokens included.

    Raises:
        GraphTokenizerError: a part of the tokenizer has no in-graph form here; the message
            names it.
    """

    def __init__(self, tokenizer, max_seq_length, name="wordpiece_tokenizer"):
        super().__init__(name=name)
        import tensorflow_text

        backend = tokenizer.backend_tokenizer
        settings = json.loads(backend.to_str())
        self._check_supported(tokenizer, settings)
        model = settings["model"]
        vocab = sorted(model["vocab"], key=model["vocab"].get)
        if [model["vocab"][token] for token in vocab] != list(range(len(vocab))):
            raise GraphTokenizerError("its WordPiece vocabulary ids are not 0, 1, 2, ... in order")

        prefix, suffix = special_token_ids(tokenizer)
        if max_seq_length <= len(prefix) + len(suffix):
            raise GraphTokenizerError(
                f"max_seq_length={max_seq_length} leaves no room for text between "
                f"{len(prefix) + len(suffix)} special tokens"
            )
        self.max_seq_length = max_seq_length
        self.unknown_token = model["unk_token"]
        self.max_chars_per_word = model["max_input_chars_per_word"]
        self.prefix_ids = prefix
        self.suffix_ids = suffix
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.character_map = _character_map(backend)
        self.wordpiece = tensorflow_text.FastWordpieceTokenizer(
            vocab=vocab,
            suffix_indicator=model["continuing_subword_prefix"],
            max_bytes_per_word=self.max_chars_per_word * MAX_UTF8_BYTES_PER_CHAR,
            token_out_type=tf.int64,
            unknown_token=self.unknown_token,
            no_pretokenization=True,
        )

    @staticmethod
    def _check_supported(tokenizer, settings):
        normalizers = _component_types(settings.get("normalizer"))
        unsupported = [name for name in normalizers if name not in PER_CHARACTER_NORMALIZERS]
        if unsupported:
            raise GraphTokenizerError(f"its normalizer {', '.join(unsupported)} is not per-character")
        pre_tokenizers = _component_types(settings.get("pre_tokenizer"))
        unsupported = [name for name in pre_tokenizers if name not in PER_CHARACTER_PRE_TOKENIZERS]
        if not pre_tokenizers or unsupported:
            raise GraphTokenizerError(f"its pre-tokenizer {', '.join(unsupported) or 'None'} is not supported")
        # The Python tokenizer finds added tokens in the raw text before normalizing. Special
        # tokens are split like any text there (split_special_tokens), but other added tokens
        # are not.
        added = [str(token) for token in tokenizer.added_tokens_decoder.values() if not token.special]
        if added:
            raise GraphTokenizerError(f"it has added tokens {added[:5]} that the graph cannot match")

    def __call__(self, texts):
        words = self.character_map.split_words(texts)

        # Words longer than the WordPiece limit become the unknown token, as in the Python
        # tokenizer. The unknown token is a vocabulary entry, so it maps to its own id.
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > self.max_chars_per_word
        words = words.with_flat_values(tf.where(too_long, self.unknown_token, words.flat_values))
        token_ids = self.wordpiece.tokenize(words).merge_dims(1, 2)

        # NOTE: only head truncation of single texts is built. A text pair, or truncation that
        # keeps the tail, needs its own step here and the pair's special-token template.
        num_text_tokens = self.max_seq_length - len(self.prefix_ids) - len(self.suffix_ids)
        token_ids = token_ids[:, :num_text_tokens]
        batch_size = token_ids.nrows()
        pieces = [token_ids]
        if self.prefix_ids:
            prefix = tf.tile(tf.constant([self.prefix_ids], dtype=tf.int64), [batch_size, 1])
            pieces.insert(0, tf.RaggedTensor.from_tensor(prefix))
        if self.suffix_ids:
            suffix = tf.tile(tf.constant([self.suffix_ids], dtype=tf.int64), [batch_size, 1])
            pieces.append(tf.RaggedTensor.from_tensor(suffix))
        token_ids = tf.cast(tf.concat(pieces, axis=1), tf.int32)

        input_ids = token_ids.to_tensor(default_value=self.pad_token_id)
        attention_mask = tf.ones_like(token_ids).to_tensor(default_value=0)
        # An empty batch would come out 0 tokens wide, which the attention layers reject, so it
        # is padded to the width of the special tokens every text has.
        min_width = max(len(self.prefix_ids) + len(self.suffix_ids), 1)
        padding = [[0, 0], [0, tf.maximum(min_width - tf.shape(input_ids)[1], 0)]]
        input_ids = tf.pad(input_ids, padding, constant_values=self.pad_token_id)
        attention_mask = tf.pad(attention_mask, padding, constant_values=0)
        return input_ids, attention_mask


# One entry per model kind of the `tokenizers` library (the class name of
# `tokenizer.backend_tokenizer.model`).
# NOTE: Unigram (SentencePiece: ALBERT, T5, XLM-R) and BPE (GPT-2 and RoBERTa byte-level BPE)
# have no entry yet, so their exports serve token ids only.
GRAPH_TOKENIZERS = {"WordPiece": WordPieceGraphTokenizer}


def build_graph_tokenizer(tokenizer, max_seq_length):
    """Return the in-graph form of a transformers tokenizer.

    Raises:
        GraphTokenizerError: the tokenizer has no in-graph form; the message gives the reason.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise GraphTokenizerError(
            f"{type(tokenizer).__name__} is a Python-only tokenizer; only fast (Rust) tokenizers "
            "can be rebuilt in the graph"
        )
    kind = type(tokenizer.backend_tokenizer.model).__name__
    if kind not in GRAPH_TOKENIZERS:
        raise GraphTokenizerError(
            f"{type(tokenizer).__name__} uses a {kind} model, and in-graph tokenizers exist only "
            f"for: {', '.join(GRAPH_TOKENIZERS)}"
        )
    return GRAPH_TOKENIZERS[kind](tokenizer, max_seq_length)
