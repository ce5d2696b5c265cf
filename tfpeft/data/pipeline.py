"""Tokenize texts once, then feed them to Keras as a tf.data pipeline with per-batch padding,
optionally batching texts of similar length together."""

import dataclasses
import math

import numpy as np
import tensorflow as tf

from tfpeft.data.truncation import check_truncation, cut_pieces, kept_positions
from tfpeft.errors import ConfigError
from tfpeft.text_cleaning import clean_texts


@dataclasses.dataclass
class EncodedTexts:
    """Token ids of many texts (or sentence pairs), right-padded into one matrix.

    Args:
        input_ids: int32 array ``[num_texts, max_length]``, padded with ``pad_token_id``.
        lengths: int32 array ``[num_texts]``, the number of real tokens of each text.
        pad_token_id: int. The tokenizer's padding id.
        token_type_ids: int32 array like ``input_ids`` or None. The segment of each token, for
            sentence pairs on backbones that take segment ids (BERT); padded with 0.
        full_lengths: int32 array ``[num_texts]`` or None. Tokens of each text before
            truncation, special tokens included.
    """

    input_ids: np.ndarray
    lengths: np.ndarray
    pad_token_id: int
    token_type_ids: np.ndarray = None
    full_lengths: np.ndarray = None

    def __len__(self):
        return len(self.lengths)


def uses_token_type_ids(tokenizer, paired):
    """Return True when sentence pairs for this tokenizer carry segment ids (BERT, not RoBERTa)."""
    return bool(paired) and "token_type_ids" in tokenizer.model_input_names


def encode_texts(tokenizer, texts, max_seq_length, *, text_pairs=None, truncation="head"):
    """Tokenize texts (or sentence pairs) with special tokens, cut to ``max_seq_length`` tokens.

    Texts are tokenized in full first, so that ``full_lengths`` records their real lengths,
    and then cut by ``truncation`` (see ``tfpeft.data.truncation``). Pairs are encoded as the
    tokenizer encodes pairs (``[CLS] a [SEP] b [SEP]`` for BERT, with segment ids).

    Args:
        tokenizer: a transformers tokenizer.
        texts: list of str.
        max_seq_length: int. Tokens per text at most, special tokens included.
        text_pairs: list of str or None. The second text of each pair.
        truncation: str. ``head``, ``tail`` or ``head_tail``.
    """
    check_truncation(truncation)
    # The same cleaning an exported model applies in its graph (tfpeft.text_cleaning).
    texts = clean_texts(texts)
    if text_pairs is not None:
        text_pairs = clean_texts(text_pairs)
        if len(text_pairs) != len(texts):
            raise ConfigError(f"Got {len(texts)} texts but {len(text_pairs)} text pairs; pass one second text per text.")
    with_type_ids = uses_token_type_ids(tokenizer, text_pairs is not None)
    if not texts:
        sequences, type_ids, full_lengths = [], [], []
    elif tokenizer.is_fast:
        sequences, type_ids, full_lengths = _encode_fast(tokenizer, texts, text_pairs, max_seq_length, truncation, with_type_ids)
    else:
        sequences, type_ids, full_lengths = _encode_slow(tokenizer, texts, text_pairs, max_seq_length, truncation, with_type_ids)

    lengths = np.array([len(ids) for ids in sequences], dtype=np.int32)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = _pad(sequences, lengths, pad_token_id)
    token_type_ids = _pad(type_ids, lengths, 0) if with_type_ids else None
    return EncodedTexts(input_ids, lengths, pad_token_id, token_type_ids, np.array(full_lengths, dtype=np.int32))


def _pad(sequences, lengths, value):
    width = int(lengths.max()) if len(lengths) else 1
    matrix = np.full((len(sequences), width), value, dtype=np.int32)
    for row, ids in enumerate(sequences):
        matrix[row, : len(ids)] = ids
    return matrix


def _encode_fast(tokenizer, texts, text_pairs, max_seq_length, truncation, with_type_ids):
    # verbose=False silences the warning about texts over the model's limit: they are cut below.
    encoding = tokenizer(
        texts,
        text_pairs,
        truncation=False,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=with_type_ids,
        verbose=False,
        # A literal "[SEP]" in a text is plain text, as in the exported graph.
        split_special_tokens=True,
    )
    sequences, type_ids, full_lengths = [], [], []
    for i, ids in enumerate(encoding["input_ids"]):
        positions = kept_positions(encoding.sequence_ids(i), max_seq_length, truncation)
        sequences.append(np.asarray(ids, dtype=np.int32)[positions])
        if with_type_ids:
            type_ids.append(np.asarray(encoding["token_type_ids"][i], dtype=np.int32)[positions])
        full_lengths.append(len(ids))
    return sequences, type_ids, full_lengths


def _encode_slow(tokenizer, texts, text_pairs, max_seq_length, truncation, with_type_ids):
    """Encode with a Python tokenizer, which has no ``sequence_ids``: cut the pieces, then add
    the special tokens with ``prepare_for_model``."""
    options = dict(
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
        split_special_tokens=True,
    )
    first = tokenizer(texts, **options)["input_ids"]
    second = tokenizer(text_pairs, **options)["input_ids"] if text_pairs is not None else [None] * len(texts)
    num_special = tokenizer.num_special_tokens_to_add(pair=text_pairs is not None)
    sequences, type_ids, full_lengths = [], [], []
    for first_ids, second_ids in zip(first, second):
        full_lengths.append(len(first_ids) + len(second_ids or []) + num_special)
        first_ids, second_ids = cut_pieces(first_ids, second_ids, num_special, max_seq_length, truncation)
        encoded = tokenizer.prepare_for_model(
            first_ids,
            second_ids,
            add_special_tokens=True,
            return_token_type_ids=with_type_ids,
            return_attention_mask=False,
            verbose=False,
        )
        sequences.append(np.asarray(encoded["input_ids"], dtype=np.int32))
        if with_type_ids:
            type_ids.append(np.asarray(encoded["token_type_ids"], dtype=np.int32))
    return sequences, type_ids, full_lengths


def encode_texts_in_chunks(tokenizer, texts, max_seq_length, *, text_pairs=None, task=None, chunk_size=1024, **kwargs):
    """Tokenize ``texts`` like ``encode_texts``, ``chunk_size`` texts at a time.

    Args:
        tokenizer, texts, max_seq_length, text_pairs: as for ``encode_texts``; other keyword
            arguments go to it too.
        task: a ``tfpeft.progress.ProgressTask`` or None. Advanced by the texts of each chunk,
            so a long dataset shows its progress while it is tokenized.
        chunk_size: int. Texts per tokenizer call.
    """
    texts = list(texts)
    chunks = []
    for start in range(0, max(len(texts), 1), chunk_size):
        chunk_pairs = None if text_pairs is None else list(text_pairs)[start : start + chunk_size]
        chunk_texts = texts[start : start + chunk_size]
        chunks.append(encode_texts(tokenizer, chunk_texts, max_seq_length, text_pairs=chunk_pairs, **kwargs))
        if task is not None:
            task.advance(len(chunk_texts))
    if len(chunks) == 1:
        return chunks[0]

    lengths = np.concatenate([chunk.lengths for chunk in chunks])
    sequences = [row[:length] for chunk in chunks for row, length in zip(chunk.input_ids, chunk.lengths)]
    input_ids = _pad(sequences, lengths, chunks[0].pad_token_id)
    token_type_ids = None
    if chunks[0].token_type_ids is not None:
        type_rows = [row[:length] for chunk in chunks for row, length in zip(chunk.token_type_ids, chunk.lengths)]
        token_type_ids = _pad(type_rows, lengths, 0)
    full_lengths = np.concatenate([chunk.full_lengths for chunk in chunks])
    return EncodedTexts(input_ids, lengths, chunks[0].pad_token_id, token_type_ids, full_lengths)


# Length buckets per training pipeline: enough to group similar lengths, few enough that the
# partial batch each bucket leaves at the end of an epoch stays a small share of the steps.
NUM_LENGTH_BUCKETS = 8


def length_boundaries(lengths, num_buckets=NUM_LENGTH_BUCKETS):
    """Return bucket boundaries that split ``lengths`` into about equally full buckets.

    A boundary ``b`` ends a bucket before length ``b``, as ``bucket_by_sequence_length``
    expects. Equal quantiles collapse into one boundary, so texts of one length make one bucket.
    """
    lengths = np.asarray(lengths)
    if len(lengths) == 0:
        return []
    quantiles = np.quantile(lengths, np.linspace(0.0, 1.0, num_buckets + 1)[1:-1], method="higher")
    boundaries = sorted({int(q) + 1 for q in quantiles})
    return [b for b in boundaries if b <= int(lengths.max())]


def count_batches(lengths, batch_size, boundaries=None):
    """Return how many batches an epoch of ``make_dataset`` yields for texts of ``lengths``."""
    lengths = np.asarray(lengths)
    if not boundaries:
        return int(math.ceil(len(lengths) / batch_size))
    buckets = np.searchsorted(np.asarray(boundaries), lengths, side="right")
    return int(sum(math.ceil(count / batch_size) for count in np.bincount(buckets) if count))


def batch_examples(dataset, batch_size, padding_values, *, length_of, boundaries=None):
    """Pad ``dataset``'s examples into batches, grouping similar lengths when ``boundaries`` is set.

    Without boundaries, consecutive examples form a batch padded to its longest example. With
    them, each example waits in the bucket of its length, and a bucket is emitted as a batch
    once it holds ``batch_size`` examples; at the end of an epoch every bucket emits what it
    holds, so every example comes exactly once. The order depends only on the input order.

    Args:
        dataset: a ``tf.data.Dataset`` of unbatched examples.
        batch_size: int. Examples per batch.
        padding_values: the ``padded_batch`` padding values, structured like an example.
        length_of: function of an example's components that returns its length (a scalar).
        boundaries: list of int or None. Bucket boundaries from ``length_boundaries``.
    """
    if not boundaries:
        return dataset.padded_batch(batch_size, padding_values=padding_values)
    return dataset.bucket_by_sequence_length(
        length_of,
        bucket_boundaries=list(boundaries),
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        padding_values=padding_values,
        pad_to_bucket_boundary=False,
    )


def make_dataset(encoded, labels=None, *, batch_size, shuffle=False, seed=None, bucket_by_length=False):
    """Build a ``tf.data.Dataset`` of ``({"input_ids", "attention_mask"}, label)`` batches.

    Each batch is padded to its own longest text, not to ``max_seq_length``, so batches of
    short texts cost less. Shuffling is seeded and differs from epoch to epoch. Sentence pairs
    encoded with segment ids add ``token_type_ids`` to the features.

    Args:
        encoded: ``EncodedTexts``.
        labels: sequence of int or None. Class ids; None yields features only.
        batch_size: int. Examples per batch.
        shuffle: bool. Shuffle the examples before batching.
        seed: int or None. The shuffle seed.
        bucket_by_length: bool. Batch texts of similar length together (see
            ``batch_examples``), which cuts the padding the backbone computes on. Batches then
            vary in size at the end of each epoch; ``count_batches`` gives their number.
    """
    with_type_ids = encoded.token_type_ids is not None
    tensors = (encoded.input_ids, encoded.lengths)
    if with_type_ids:
        tensors += (encoded.token_type_ids,)
    if labels is not None:
        tensors += (np.asarray(labels, dtype=np.int32),)
    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        dataset = dataset.shuffle(len(encoded), seed=seed, reshuffle_each_iteration=True)

    pad_token_id = encoded.pad_token_id

    def trim(input_ids, length, *rest):
        features = {
            "input_ids": input_ids[:length],
            "attention_mask": tf.ones([length], dtype=tf.int32),
        }
        if with_type_ids:
            features["token_type_ids"] = rest[0][:length]
            rest = rest[1:]
        return (features, rest[0]) if rest else features

    dataset = dataset.map(trim, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    padding_values = {"input_ids": pad_token_id, "attention_mask": 0}
    if with_type_ids:
        padding_values["token_type_ids"] = 0
    if labels is not None:
        padding_values = (padding_values, 0)
    boundaries = length_boundaries(encoded.lengths) if bucket_by_length else None
    dataset = batch_examples(
        dataset, batch_size, padding_values,
        length_of=lambda features, *label: tf.shape(features["attention_mask"])[0],
        boundaries=boundaries,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def padding_share(dataset):
    """Return the share of padding among the token positions of one pass over ``dataset``.

    ``dataset`` yields ``make_dataset`` batches; only their attention masks are read.
    """
    real = total = 0
    for batch in dataset:
        features = batch[0] if isinstance(batch, tuple) else batch
        mask = features["attention_mask"].numpy()
        real += int(mask.sum())
        total += mask.size
    return 1.0 - real / total if total else 0.0
