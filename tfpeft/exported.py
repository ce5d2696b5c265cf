"""Predict with a SavedModel written by ``tfpeft.export``, as ``tfpeft predict`` does."""

import json
import os

import numpy as np

from tfpeft.errors import ConfigError, RunFolderError


def is_export_folder(path):
    """Return True for a version folder written by ``tfpeft.export``."""
    from tfpeft.export import INFO_FILE

    return os.path.isfile(os.path.join(path, "saved_model.pb")) and os.path.isfile(os.path.join(path, INFO_FILE))


def find_export_folder(path):
    """Return ``path`` if it is an export's version folder, else its highest exported version.

    Returns None when ``path`` is neither, for example a run folder. The highest version is the
    one TF Serving serves by default.
    """
    from tfpeft.export import existing_versions

    if is_export_folder(path):
        return path
    for version in reversed(existing_versions(path)):
        if is_export_folder(os.path.join(path, str(version))):
            return os.path.join(path, str(version))
    return None


class ExportedClassifier:
    """An exported SavedModel with the ``predict`` API of ``TextClassifier``.

    Texts go through the ``serving_default`` signature. An export that has only
    ``serving_ids`` is fed ids from the tokenizer saved in its ``assets.extra/tokenizer/``.

    Args:
        path: str. A version folder, ``MODELS_DIR/NAME/<version>``.

    Example:

    >>> classifier = ExportedClassifier("models/bbc/1")
    >>> classifier.predict(["Shares fell after the results."])
    ['business']
    """

    def __init__(self, path):
        import tensorflow as tf
        # Registers the TensorFlow Text ops that the text signature's graph uses.
        import tensorflow_text  # noqa: F401

        from tfpeft.export import INFO_FILE

        if not is_export_folder(path):
            raise RunFolderError(
                f"{path!r} is not a version folder written by tfpeft export (no saved_model.pb "
                f"and {INFO_FILE}). Pass MODELS_DIR/NAME/<version>."
            )
        self.path = path
        with open(os.path.join(path, INFO_FILE), encoding="utf-8") as file:
            self.info = json.load(file)
        self.saved_model = tf.saved_model.load(path)
        self._tokenizer = None

    @property
    def labels(self):
        return list(self.info["labels"])

    @property
    def takes_pairs(self):
        """True when the exported classifier was trained on sentence pairs."""
        return self.info.get("text_pair_column") is not None

    def _encode(self, texts, text_pairs):
        from transformers import AutoTokenizer

        from tfpeft.data import encode_texts
        from tfpeft.export import IDS_SIGNATURE, TOKENIZER_DIR

        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(os.path.join(self.path, TOKENIZER_DIR))
        encoded = encode_texts(
            self._tokenizer,
            texts,
            self.info["max_seq_length"],
            text_pairs=text_pairs,
            truncation=self.info.get("truncation", "head"),
        )
        positions = np.arange(encoded.input_ids.shape[1])[None, :]
        attention_mask = (positions < encoded.lengths[:, None]).astype(np.int32)
        inputs = {"input_ids": encoded.input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.saved_model.signatures[IDS_SIGNATURE].structured_input_signature[1]:
            type_ids = encoded.token_type_ids
            inputs["token_type_ids"] = type_ids if type_ids is not None else np.zeros_like(encoded.input_ids)
        return inputs

    def _predict_batch(self, texts, text_pairs):
        import tensorflow as tf

        from tfpeft.export import IDS_SIGNATURE, TEXT_SIGNATURE
        from tfpeft.text_cleaning import to_utf8

        def utf8(values):
            return tf.constant([text if isinstance(text, bytes) else to_utf8(str(text)) for text in values], tf.string)

        signatures = self.saved_model.signatures
        if TEXT_SIGNATURE in signatures:
            inputs = {"text": utf8(texts)}
            if text_pairs is not None:
                inputs["text_pair"] = utf8(text_pairs)
            outputs = signatures[TEXT_SIGNATURE](**inputs)
        else:
            inputs = self._encode(texts, text_pairs)
            outputs = signatures[IDS_SIGNATURE](**{key: tf.constant(value) for key, value in inputs.items()})
        return outputs["probabilities"].numpy()

    def predict_proba(self, texts, batch_size=None, *, text_pairs=None):
        """Return class probabilities ``[len(texts), num_labels]``, columns in ``labels`` order."""
        texts = list(texts)
        if self.takes_pairs != (text_pairs is not None):
            needed = "pass text_pairs (--text-pair)" if self.takes_pairs else "drop text_pairs (--text-pair)"
            raise ConfigError(
                f"The model in {self.path!r} was trained on "
                f"{'sentence pairs' if self.takes_pairs else 'single texts'}; {needed}."
            )
        if text_pairs is not None:
            text_pairs = list(text_pairs)
            if len(text_pairs) != len(texts):
                raise ConfigError(f"Got {len(texts)} texts but {len(text_pairs)} text pairs; pass one second text per text.")
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        batch_size = batch_size or self.info["per_device_eval_batch_size"]
        batches = [
            self._predict_batch(texts[i : i + batch_size], None if text_pairs is None else text_pairs[i : i + batch_size])
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(batches, axis=0)

    def predict(self, texts, batch_size=None, *, text_pairs=None):
        """Return the predicted class name of each text (or sentence pair)."""
        probabilities = self.predict_proba(texts, batch_size, text_pairs=text_pairs)
        return [self.labels[int(i)] for i in probabilities.argmax(axis=-1)]
