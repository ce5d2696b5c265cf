"""In-graph tokenizers: a run's Python tokenizer rebuilt from TensorFlow ops, for serving.

An exported SavedModel takes raw text, so its graph must turn text into the same token ids as
the Hugging Face tokenizer used in training. ``build_graph_tokenizer`` picks the in-graph form
by the kind of the tokenizer's model: ``WordPiece`` here, ``Unigram`` (SentencePiece) in
``tfpeft.graph_sentencepiece``; byte-level ``BPE`` has no TensorFlow Text op. A tokenizer it
cannot rebuild raises ``GraphTokenizerError`` with the reason, and the export then serves
token ids only. ``GraphTokenizer`` runs the steps all of them share: truncation by the run's
rule, the special tokens around one text or a pair, and padding.

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
        chars = list(set("".join(normalized)) | {" "})
        if pre_tokenizer is None:
            boundary = {char: char for char in chars}
        else:
            boundary = _pre_tokenized_chars(pre_tokenizer, chars)
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

    def apply(self, texts):
        """Map each code point of a 1-D string tensor; return the mapped texts, words between spaces."""
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
        return tf.strings.reduce_join(code_points.with_flat_values(outputs), axis=-1)

    def split_words(self, texts):
        """Normalize and pre-tokenize a 1-D string tensor into a ragged ``[batch, words]`` tensor."""
        words = tf.strings.split(self.apply(texts), sep=" ")
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


def character_map(normalizer, pre_tokenizer):
    """Return the ``CharacterMap`` of a `tokenizers` normalizer and pre-tokenizer (either may be None)."""
    # Probing every code point takes seconds, so each distinct normalizer and pre-tokenizer is
    # probed once per process.
    key = json.dumps(
        [json.loads(part.__getstate__()) if part is not None else None for part in (normalizer, pre_tokenizer)],
        sort_keys=True,
    )
    if key not in _CHARACTER_MAPS:
        _CHARACTER_MAPS[key] = CharacterMap.probe(normalizer, pre_tokenizer)
    return _CHARACTER_MAPS[key]


def _component_types(component):
    """Return the type names in a normalizer or pre-tokenizer setting, looking inside Sequences."""
    if component is None:
        return []
    if component["type"] == "Sequence":
        inner = component.get("normalizers") or component.get("pretokenizers") or []
        return [name for part in inner for name in _component_types(part)]
    return [component["type"]]


TRUNCATIONS = ("head", "tail", "head_tail")


@dataclasses.dataclass(frozen=True)
class SpecialTokenTemplate:
    """The places of a tokenizer's special tokens around one text or a pair.

    Args:
        parts: tuple. Each part is ``("special", ids, type_ids)`` for special tokens, or
            ``("text", index, type_id)`` for the pieces of text ``index`` (0 or 1).
    """

    parts: tuple

    @classmethod
    def read(cls, tokenizer, pair):
        """Read the template off the encoding of ``"a"`` (and ``"b"``) by the fast tokenizer."""
        encoding = tokenizer("a", "b" if pair else None, return_token_type_ids=True, split_special_tokens=True)
        ids, type_ids = encoding["input_ids"], encoding["token_type_ids"]
        parts = []
        for position, sequence_id in enumerate(encoding.sequence_ids(0)):
            kind = "special" if sequence_id is None else "text"
            if parts and parts[-1][0] == kind and (kind == "special" or parts[-1][1] == sequence_id):
                if kind == "special":
                    parts[-1][1].append(ids[position])
                    parts[-1][2].append(type_ids[position])
                elif parts[-1][2] != type_ids[position]:
                    raise GraphTokenizerError("its segment ids change inside one text")
            elif kind == "special":
                parts.append(["special", [ids[position]], [type_ids[position]]])
            else:
                parts.append(["text", sequence_id, type_ids[position]])
        texts = [part[1] for part in parts if part[0] == "text"]
        if texts != ([0, 1] if pair else [0]):
            raise GraphTokenizerError(f"its special tokens {ids} do not keep each text in one piece")
        return cls(tuple(tuple(tuple(x) if isinstance(x, list) else x for x in part) for part in parts))

    @property
    def num_special(self):
        return sum(len(part[1]) for part in self.parts if part[0] == "special")


def share_budget(first_lengths, second_lengths, budget):
    """Return the pieces each text of a pair keeps, as ``tfpeft.data.truncation.share_budget`` does.

    Args:
        first_lengths, second_lengths: int64 tensors ``[batch]``, the pieces of each text.
        budget: int. Pieces both texts may keep together.
    """
    fits = first_lengths + second_lengths <= budget
    swapped = first_lengths > second_lengths
    shorter = tf.minimum(tf.minimum(first_lengths, second_lengths), budget // 2)
    longer = budget - shorter
    keep_first = tf.where(fits, first_lengths, tf.where(swapped, longer, shorter))
    keep_second = tf.where(fits, second_lengths, tf.where(swapped, shorter, longer))
    return keep_first, keep_second


def truncate(token_ids, keep, truncation):
    """Keep ``keep`` pieces of each row of a ragged tensor, as ``tfpeft.data.truncation.kept_indices`` does.

    Args:
        token_ids: ragged tensor ``[batch, (pieces)]``.
        keep: int64 tensor ``[batch]`` or int. Pieces to keep at most per row.
        truncation: str. ``head`` keeps the first pieces, ``tail`` the last, ``head_tail`` a
            quarter of ``keep`` from the start and the rest from the end.
    """
    lengths = token_ids.row_lengths()
    keep = tf.minimum(tf.cast(keep, lengths.dtype), lengths)
    if truncation == "head":
        num_head = keep
    elif truncation == "tail":
        num_head = tf.zeros_like(keep)
    else:
        num_head = keep // 4
    rows = token_ids.value_rowids()
    positions = tf.ragged.range(lengths).flat_values
    kept = (positions < tf.gather(num_head, rows)) | (positions >= tf.gather(lengths - (keep - num_head), rows))
    return tf.ragged.boolean_mask(token_ids, token_ids.with_flat_values(kept))


class GraphTokenizer(tf.Module):
    """The steps every in-graph tokenizer shares: truncation, special tokens, padding.

    A subclass turns a 1-D string tensor of cleaned texts into a ragged tensor of piece ids
    (``tokenize_pieces``). Calling the tokenizer on texts (and second texts, for a run trained
    on pairs) then cuts the pieces to ``max_seq_length`` by the run's truncation rule, puts
    the special tokens around them and right-pads the batch to its longest row. The result is
    a dict of int32 ``[batch, length]`` tensors, ``input_ids`` and ``attention_mask`` (and
    ``token_type_ids`` for pairs on backbones that take segment ids): the ids
    ``tfpeft.data.encode_texts`` gives.

    Args:
        tokenizer: a transformers fast tokenizer.
        max_seq_length: int. Maximum tokens per text or pair, special tokens included.
        truncation: str. ``head``, ``tail`` or ``head_tail``.
        pairs: bool. Whether the texts come in pairs.
    """

    def __init__(self, tokenizer, max_seq_length, truncation="head", pairs=False, name=None):
        super().__init__(name=name)
        if truncation not in TRUNCATIONS:
            raise GraphTokenizerError(f"truncation={truncation!r} is none of {', '.join(TRUNCATIONS)}")
        self.template = SpecialTokenTemplate.read(tokenizer, pairs)
        budget = max_seq_length - self.template.num_special
        if budget < (2 if pairs else 1):
            raise GraphTokenizerError(
                f"max_seq_length={max_seq_length} leaves no room for text between "
                f"{self.template.num_special} special tokens"
            )
        self.max_seq_length = max_seq_length
        self.budget = budget
        self.truncation = truncation
        self.pairs = pairs
        self.with_type_ids = pairs and "token_type_ids" in tokenizer.model_input_names
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def tokenize_pieces(self, texts):
        """Return the int64 piece ids of each cleaned text, a ragged ``[batch, (pieces)]`` tensor."""
        raise NotImplementedError

    def __call__(self, texts, text_pairs=None):
        if (text_pairs is not None) != self.pairs:
            raise GraphTokenizerError(f"this tokenizer was built for pairs={self.pairs}")
        pieces = [self.tokenize_pieces(texts)]
        if self.pairs:
            pieces.append(self.tokenize_pieces(text_pairs))
            keep = share_budget(pieces[0].row_lengths(), pieces[1].row_lengths(), self.budget)
        else:
            keep = [tf.fill([pieces[0].nrows()], tf.constant(self.budget, tf.int64))]
        pieces = [truncate(ids, num_kept, self.truncation) for ids, num_kept in zip(pieces, keep)]

        batch_size = pieces[0].nrows()
        id_parts, type_parts = [], []
        for kind, value, type_ids in self.template.parts:
            if kind == "text":
                id_parts.append(pieces[value])
                type_parts.append(tf.ones_like(pieces[value]) * type_ids)
            else:
                id_parts.append(tf.RaggedTensor.from_tensor(tf.tile(tf.constant([value], tf.int64), [batch_size, 1])))
                type_parts.append(tf.RaggedTensor.from_tensor(tf.tile(tf.constant([type_ids], tf.int64), [batch_size, 1])))
        token_ids = tf.cast(tf.concat(id_parts, axis=1), tf.int32)

        # An empty batch would come out 0 tokens wide, which the attention layers reject, so it
        # is padded to the width of the special tokens every text has.
        min_width = max(self.template.num_special, 1)

        def dense(ragged, value):
            matrix = ragged.to_tensor(default_value=value)
            padding = [[0, 0], [0, tf.maximum(min_width - tf.shape(matrix)[1], 0)]]
            return tf.pad(matrix, padding, constant_values=value)

        outputs = {
            "input_ids": dense(token_ids, self.pad_token_id),
            "attention_mask": dense(tf.ones_like(token_ids), 0),
        }
        if self.with_type_ids:
            outputs["token_type_ids"] = dense(tf.cast(tf.concat(type_parts, axis=1), tf.int32), 0)
        return outputs


class WordPieceGraphTokenizer(GraphTokenizer):
    """A WordPiece tokenizer (BERT family) as TF ops, with the Python tokenizer's exact ids.

    Called on texts already cleaned by ``clean_text_tensor``; see ``GraphTokenizer``.

    Args:
        tokenizer: a transformers fast tokenizer whose model is WordPiece.
        max_seq_length, truncation, pairs: as for ``GraphTokenizer``.

    Raises:
        GraphTokenizerError: a part of the tokenizer has no in-graph form here; the message
            names it.
    """

    def __init__(self, tokenizer, max_seq_length, truncation="head", pairs=False, name="wordpiece_tokenizer"):
        super().__init__(tokenizer, max_seq_length, truncation, pairs, name=name)
        import tensorflow_text

        backend = tokenizer.backend_tokenizer
        settings = json.loads(backend.to_str())
        self._check_supported(tokenizer, settings)
        model = settings["model"]
        vocab = sorted(model["vocab"], key=model["vocab"].get)
        if [model["vocab"][token] for token in vocab] != list(range(len(vocab))):
            raise GraphTokenizerError("its WordPiece vocabulary ids are not 0, 1, 2, ... in order")
        self.unknown_token = model["unk_token"]
        self.max_chars_per_word = model["max_input_chars_per_word"]
        self.character_map = character_map(backend.normalizer, backend.pre_tokenizer)
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

    def tokenize_pieces(self, texts):
        words = self.character_map.split_words(texts)

        # Words longer than the WordPiece limit become the unknown token, as in the Python
        # tokenizer. The unknown token is a vocabulary entry, so it maps to its own id.
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > self.max_chars_per_word
        words = words.with_flat_values(tf.where(too_long, self.unknown_token, words.flat_values))
        return self.wordpiece.tokenize(words).merge_dims(1, 2)


def _registry():
    from tfpeft.graph_sentencepiece import SentencePieceGraphTokenizer

    # One entry per model kind of the `tokenizers` library (the class name of
    # `tokenizer.backend_tokenizer.model`). BPE (GPT-2 and RoBERTa byte-level BPE) has no
    # TensorFlow Text op, so its exports serve token ids only.
    return {"WordPiece": WordPieceGraphTokenizer, "Unigram": SentencePieceGraphTokenizer}


def build_graph_tokenizer(tokenizer, max_seq_length, truncation="head", pairs=False):
    """Return the in-graph form of a transformers tokenizer.

    Args:
        tokenizer: a transformers tokenizer.
        max_seq_length, truncation, pairs: as for ``GraphTokenizer``.

    Raises:
        GraphTokenizerError: the tokenizer has no in-graph form; the message gives the reason.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise GraphTokenizerError(
            f"{type(tokenizer).__name__} is a Python-only tokenizer; only fast (Rust) tokenizers "
            "can be rebuilt in the graph"
        )
    kind = type(tokenizer.backend_tokenizer.model).__name__
    graph_tokenizers = _registry()
    if kind not in graph_tokenizers:
        reason = ", which no TensorFlow Text op runs" if kind == "BPE" else ""
        raise GraphTokenizerError(
            f"{type(tokenizer).__name__} uses a {kind} model{reason}, and in-graph tokenizers exist "
            f"only for: {', '.join(graph_tokenizers)}"
        )
    return graph_tokenizers[kind](tokenizer, max_seq_length, truncation, pairs)
