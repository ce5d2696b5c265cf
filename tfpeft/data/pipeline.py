"""Tokenize texts once, then feed them to Keras as a tf.data pipeline with per-batch padding."""

import dataclasses

import numpy as np
import tensorflow as tf

from tfpeft.text_cleaning import clean_texts


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
    """Clean and tokenize ``texts`` with special tokens, truncated to ``max_seq_length`` tokens.

    Texts are cleaned with ``tfpeft.text_cleaning.clean_text``, the rule an exported model
    applies in its graph. Special-token strings in a text, such as a literal ``[SEP]``, are
    tokenized as plain text (``split_special_tokens``), as the exported graph does.
    """
    encoded = tokenizer(
        clean_texts(texts),
        truncation=True,
        max_length=max_seq_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        split_special_tokens=True,
    )["input_ids"]
    lengths = np.array([len(ids) for ids in encoded], dtype=np.int32)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = int(lengths.max()) if len(lengths) else 1
    input_ids = np.full((len(encoded), width), pad_token_id, dtype=np.int32)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = ids
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
