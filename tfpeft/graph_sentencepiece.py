"""The in-graph form of SentencePiece Unigram tokenizers (ALBERT, T5, XLM-R, DeBERTa-v2).

The Hugging Face fast tokenizer of a SentencePiece model runs: a normalizer sequence around
the model's precompiled character map (``Precompiled``), the ``Metaspace`` pre-tokenizer
(spaces become U+2581 and split words) and a Unigram model over the model's pieces.
TensorFlow Text's ``SentencepieceTokenizer`` runs the ``.model`` file itself, whose own
normalizer applies the same character map, removes extra spaces and adds the word-start
prefix. The graph therefore:

1. applies the normalizers that come before ``Precompiled`` with core TF and TensorFlow Text
   ops (ALBERT's quote replacements, NFKD, accent stripping and lowercasing; DeBERTa's strip);
2. runs the ``.model`` file with two changes. Its control pieces (``<s>``, ``[CLS]``) become
   user-defined pieces, because the Hugging Face Unigram model matches them in plain text like
   any piece. The word-start prefix is added only where ``Metaspace`` adds it;
3. adds the trailing U+2581 piece that the Hugging Face tokenizer keeps where its normalizer
   does not strip a final space (ALBERT, DeBERTa-v2), and
4. maps SentencePiece ids to the Hugging Face ids: XLM-R shifts every piece by one to put
   ``<s>``, ``<pad>``, ``</s>`` and ``<unk>`` first (the fairseq order).

Anything else in the normalizer or pre-tokenizer raises ``GraphTokenizerError``, and the
export then serves token ids only.
"""

import base64
import json
import re

import tensorflow as tf

from tfpeft.errors import GraphTokenizerError
from tfpeft.graph_tokenizers import GraphTokenizer, character_map

WORD_START = "\u2581"
# Unicode White_Space, which the `tokenizers` Strip normalizer removes (Rust's
# char::is_whitespace).
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Normalizers before `Precompiled` that map each character on its own; the graph applies them
# through one probed CharacterMap.
PER_CHARACTER = {"NFKD", "StripAccents", "Lowercase"}
# The whitespace tidying after `Precompiled` that the SentencePiece normalizer repeats.
COLLAPSE_SPACES = {"type": "Replace", "pattern": {"Regex": " {2,}"}}
# NOTE: NFD and NFKD also reorder adjacent combining marks by combining class, which the
# per-character map cannot. ALBERT's accent stripping drops the nonspacing ones, so only runs of
# two or more spacing marks with a nonzero class can come out in another order than in Python.
# A text holding the unknown piece's own text ("<unk>") differs too: the Hugging Face Unigram
# model matches it as a piece, while SentencePiece cannot match its unknown piece.


def _components(setting, key):
    if setting is None:
        return []
    if setting["type"] == "Sequence":
        return [part for inner in setting[key] for part in _components(inner, key)]
    return [setting]


def _re2_literal(text):
    return "".join(f"\\x{{{ord(char):x}}}" for char in text)


def _sentencepiece_op(proto, out_type):
    import hashlib

    import tensorflow_text

    model = proto.SerializeToString()
    # NOTE: a loaded SavedModel finds the op's model by the op's name, which is the same in every
    # graph unless set. Two models of one SavedModel, or of two SavedModels loaded in one
    # process, would then share the model loaded first, so the name is made from the model's
    # bytes.
    name = f"sentencepiece_{hashlib.sha256(model).hexdigest()[:16]}"
    return tensorflow_text.SentencepieceTokenizer(model=model, out_type=out_type, name=name)


class SentencePieceGraphTokenizer(GraphTokenizer):
    """A SentencePiece Unigram tokenizer as TF ops, with the Python tokenizer's exact ids.

    Called on texts already cleaned by ``clean_text_tensor``; see ``GraphTokenizer``.

    Args:
        tokenizer: a transformers fast tokenizer whose model is Unigram and whose
            ``vocab_file`` is the SentencePiece model it was converted from.
        max_seq_length, truncation, pairs: as for ``GraphTokenizer``.

    Raises:
        GraphTokenizerError: a part of the tokenizer has no in-graph form here; the message
            names it.
    """

    def __init__(self, tokenizer, max_seq_length, truncation="head", pairs=False, name="sentencepiece_tokenizer"):
        super().__init__(tokenizer, max_seq_length, truncation, pairs, name=name)
        from sentencepiece import sentencepiece_model_pb2

        settings = json.loads(tokenizer.backend_tokenizer.to_str())
        model = settings["model"]
        if model.get("byte_fallback"):
            raise GraphTokenizerError("its Unigram model falls back to bytes")
        vocab_file = getattr(tokenizer, "vocab_file", None)
        if not vocab_file:
            raise GraphTokenizerError("its SentencePiece .model file was not saved with it")
        proto = sentencepiece_model_pb2.ModelProto()
        try:
            with open(vocab_file, "rb") as file:
                proto.ParseFromString(file.read())
        except (OSError, ValueError) as error:
            raise GraphTokenizerError(f"its SentencePiece model {vocab_file!r} cannot be read: {error}") from error

        self._read_normalizer(settings, proto)
        self._read_pre_tokenizer(settings)
        self._check_added_tokens(tokenizer)
        self.hf_ids = self._id_map(model, proto)
        word_start_id = {piece: i for i, (piece, _) in reversed(list(enumerate(model["vocab"])))}.get(WORD_START)
        self.word_start_id = model["unk_id"] if word_start_id is None else word_start_id

        for piece in proto.pieces:
            if piece.type == piece.CONTROL:
                piece.type = piece.USER_DEFINED
        spec = proto.normalizer_spec
        spec.remove_extra_whitespaces = True
        # Two variants of the model: with and without the word-start prefix, and a third that
        # keeps every space, to see whether the normalized text starts or ends with one.
        spec.add_dummy_prefix = True
        self.with_prefix = _sentencepiece_op(proto, tf.int32)
        spec.add_dummy_prefix = False
        self.without_prefix = _sentencepiece_op(proto, tf.int32)
        spec.remove_extra_whitespaces = False
        self.all_spaces = _sentencepiece_op(proto, tf.string)

    def _read_normalizer(self, settings, proto):
        parts = _components(settings.get("normalizer"), "normalizers")
        types = [part["type"] for part in parts]
        if types.count("Precompiled") != 1:
            raise GraphTokenizerError(f"its normalizer {', '.join(types) or 'None'} has no single Precompiled map")
        index = types.index("Precompiled")
        charsmap = base64.b64decode(parts[index]["precompiled_charsmap"] or "")
        if charsmap != proto.normalizer_spec.precompiled_charsmap:
            raise GraphTokenizerError("its Precompiled map is not the one in its SentencePiece model")

        self.steps = []
        per_character = []
        for part in parts[:index]:
            if part["type"] in PER_CHARACTER:
                per_character.append(part)
                continue
            if per_character:
                self.steps.append(("map", per_character))
                per_character = []
            if part["type"] == "Replace" and "String" in part["pattern"]:
                self.steps.append(("replace", part["pattern"]["String"], part["content"]))
            elif part["type"] == "Strip":
                self.steps.append(("strip", part["strip_left"], part["strip_right"]))
            else:
                raise GraphTokenizerError(f"its normalizer {part['type']} before Precompiled has no in-graph form")
        if per_character:
            self.steps.append(("map", per_character))
        self.character_maps = [self._probe(step[1]) for step in self.steps if step[0] == "map"]

        self.keeps_final_space = True
        self.keeps_first_space = True
        for part in parts[index + 1 :]:
            if part["type"] == "Strip":
                self.keeps_first_space = self.keeps_first_space and not part["strip_left"]
                self.keeps_final_space = self.keeps_final_space and not part["strip_right"]
            elif not (
                part["type"] == COLLAPSE_SPACES["type"]
                and part["pattern"] == COLLAPSE_SPACES["pattern"]
                and part["content"] in (" ", WORD_START)
            ):
                raise GraphTokenizerError(f"its normalizer {part['type']} after Precompiled has no in-graph form")

    @staticmethod
    def _probe(parts):
        from tokenizers import normalizers

        return character_map(normalizers.Sequence([getattr(normalizers, part["type"])() for part in parts]), None)

    def _read_pre_tokenizer(self, settings):
        parts = _components(settings.get("pre_tokenizer"), "pretokenizers")
        if len(parts) != 1 or parts[0]["type"] != "Metaspace":
            names = ", ".join(part["type"] for part in parts) or "None"
            raise GraphTokenizerError(f"its pre-tokenizer {names} is not a single Metaspace")
        metaspace = parts[0]
        if metaspace["replacement"] != WORD_START or not metaspace.get("split", True):
            raise GraphTokenizerError("its Metaspace pre-tokenizer does not split words at U+2581")
        if metaspace.get("prepend_scheme") not in ("always", "never"):
            raise GraphTokenizerError(f"its Metaspace prepend_scheme={metaspace.get('prepend_scheme')!r} is not supported")
        self.always_prefix = metaspace["prepend_scheme"] == "always"

    @staticmethod
    def _check_added_tokens(tokenizer):
        # The Python tokenizer finds added tokens in the raw text before normalizing. Special
        # tokens are split like any text (split_special_tokens), but other added tokens are not.
        # An added token that is also a piece of the SentencePiece model is found by it too.
        vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"]
        pieces = {piece for piece, _ in vocab}
        added = [str(token) for token in tokenizer.added_tokens_decoder.values() if not token.special]
        if [token for token in added if token not in pieces]:
            raise GraphTokenizerError(f"it has added tokens {added[:5]} that the graph cannot match")

    @staticmethod
    def _id_map(model, proto):
        """Return, for each SentencePiece id, the Hugging Face id of the same piece."""
        # A piece listed twice (XLM-R's <unk>, first in the fairseq order, then in the
        # SentencePiece order) is matched to its last listing.
        last_id = {piece: hf_id for hf_id, (piece, _) in enumerate(model["vocab"])}
        ids = []
        for sp_id, piece in enumerate(proto.pieces):
            if piece.type == piece.UNKNOWN:
                ids.append(model["unk_id"])
            elif piece.piece in last_id:
                ids.append(last_id[piece.piece])
            else:
                raise GraphTokenizerError(f"its SentencePiece piece {piece.piece!r} (id {sp_id}) is not in its vocabulary")
        return tuple(ids)

    def _normalize(self, texts):
        maps = iter(self.character_maps)
        for step in self.steps:
            if step[0] == "map":
                kinds = {part["type"] for part in step[1]}
                if kinds & {"NFKD"}:
                    import tensorflow_text

                    texts = tensorflow_text.normalize_utf8(texts, "NFKD")
                texts = next(maps).apply(texts)
            elif step[0] == "replace":
                texts = tf.strings.regex_replace(texts, _re2_literal(step[1]), step[2].replace("\\", "\\\\"))
            else:
                if step[1]:
                    texts = tf.strings.regex_replace(texts, f"^[{WHITE_SPACE}]+", "")
                if step[2]:
                    texts = tf.strings.regex_replace(texts, f"[{WHITE_SPACE}]+$", "")
        return texts

    def tokenize_pieces(self, texts):
        texts = self._normalize(texts)
        if self.always_prefix:
            sp_ids = self.with_prefix.tokenize(texts)
        else:
            # Metaspace without a prefix keeps one word start where the normalized text starts
            # with a space, which the SentencePiece normalizer would strip.
            first_piece = tf.strings.reduce_join(self.all_spaces.tokenize(texts)[:, :1], axis=-1)
            starts_with_space = tf.strings.substr(first_piece, 0, 1, unit="UTF8_CHAR") == WORD_START
            if not self.keeps_first_space:
                starts_with_space = tf.zeros_like(starts_with_space)
            both = tf.concat([self.with_prefix.tokenize(texts), self.without_prefix.tokenize(texts)], axis=0)
            num_texts = tf.shape(texts, out_type=tf.int64)[0]
            rows = tf.range(num_texts) + tf.where(starts_with_space, tf.zeros_like(num_texts), num_texts)
            sp_ids = tf.gather(both, rows)
        token_ids = tf.gather(tf.constant(self.hf_ids, tf.int64), sp_ids)
        if self.keeps_final_space:
            # The Hugging Face normalizer keeps a final space, which Metaspace turns into a word
            # start of its own.
            pieces = self.all_spaces.tokenize(texts)
            last_piece = tf.strings.reduce_join(pieces[:, -1:], axis=-1)
            ends_with_space = tf.strings.regex_full_match(last_piece, f".*{WORD_START}")
            extra = tf.ragged.boolean_mask(
                tf.fill([tf.shape(texts)[0], 1], tf.constant(self.word_start_id, tf.int64)),
                tf.expand_dims(ends_with_space, -1),
            )
            token_ids = tf.concat([token_ids, extra], axis=1)
        return token_ids
