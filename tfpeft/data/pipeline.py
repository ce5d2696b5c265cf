"""Tokenize texts once, then feed them to Keras as a tf.data pipeline with per-batch padding."""

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class EncodedTexts:
    """Token ids of many texts, right-padded into one matrix.

    Args:
        input_ids: int32 array ``[num_texts, max_length]``, padded with ``pad_token_id``.
        lengths: int32 array ``[num_texts]``, the number of real tokens of each text.
        pad_token_id: int. The tokenizer's padding id.
    """

    input_ids: np.ndarray
    lengths: np.ndarray
    pad_token_id: int

    def __len__(self):
        return len(self.lengths)


def encode_texts(tokenizer, texts, max_seq_length):
    """Tokenize ``texts`` with special tokens, truncated to ``max_seq_length`` tokens."""
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_seq_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )["input_ids"]
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int32)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = int(lengths.max()) if len(lengths) else 1
    input_ids = np.full((len(encoded), width), pad_token_id, dtype=np.int32)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = ids
    return EncodedTexts(input_ids, lengths, pad_token_id)


def encode_texts_in_chunks(tokenizer, texts, max_seq_length, *, task=None, chunk_size=1024, **kwargs):
    """Tokenize ``texts`` like ``encode_texts``, ``chunk_size`` texts at a time.

    Args:
        tokenizer, texts, max_seq_length: as for ``encode_texts``; other keyword arguments
            go to it too.
        task: a ``tfpeft.progress.ProgressTask`` or None. Advanced by the texts of each chunk,
            so a long dataset shows its progress while it is tokenized.
        chunk_size: int. Texts per tokenizer call.
    """
    texts = list(texts)
    if not texts:
        # Fast tokenizers of transformers 4.54 raise IndexError on an empty batch.
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return EncodedTexts(np.zeros((0, 1), dtype=np.int32), np.zeros(0, dtype=np.int32), pad_token_id)

    chunks = []
    for start in range(0, len(texts), chunk_size):
        chunk_texts = texts[start : start + chunk_size]
        chunks.append(encode_texts(tokenizer, chunk_texts, max_seq_length, **kwargs))
        if task is not None:
            task.advance(len(chunk_texts))
    if len(chunks) == 1:
        return chunks[0]

    pad_token_id = chunks[0].pad_token_id
    lengths = np.concatenate([chunk.lengths for chunk in chunks])
    width = max(chunk.input_ids.shape[1] for chunk in chunks)
    input_ids = np.full((len(lengths), width), pad_token_id, dtype=np.int32)
    row = 0
    for chunk in chunks:
        input_ids[row : row + len(chunk), : chunk.input_ids.shape[1]] = chunk.input_ids
        row += len(chunk)
    return EncodedTexts(input_ids, lengths, pad_token_id)


def make_dataset(encoded, labels=None, *, batch_size, shuffle=False, seed=None):
    """Build a ``tf.data.Dataset`` of ``({"input_ids", "attention_mask"}, label)`` batches.

    Each batch is padded to its own longest text, not to ``max_seq_length``, so batches of
    short texts cost less. Shuffling is seeded and differs from epoch to epoch.

    Args:
        encoded: ``EncodedTexts``.
        labels: sequence of int or None. Class ids; None yields features only.
        batch_size: int. Examples per batch.
        shuffle: bool. Shuffle the examples before batching.
        seed: int or None. The shuffle seed.
    """
    tensors = (encoded.input_ids, encoded.lengths)
    if labels is not None:
        tensors += (np.asarray(labels, dtype=np.int32),)
    dataset = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        dataset = dataset.shuffle(len(encoded), seed=seed, reshuffle_each_iteration=True)

    pad_token_id = encoded.pad_token_id

    def trim(input_ids, length, *label):
        features = {
            "input_ids": input_ids[:length],
            "attention_mask": tf.ones([length], dtype=tf.int32),
        }
        return (features, label[0]) if label else features

    dataset = dataset.map(trim, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    padding_values = {"input_ids": pad_token_id, "attention_mask": 0}
    if labels is not None:
        padding_values = (padding_values, 0)
    dataset = dataset.padded_batch(batch_size, padding_values=padding_values)
    return dataset.prefetch(tf.data.AUTOTUNE)
