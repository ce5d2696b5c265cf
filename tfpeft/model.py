"""The classifier: backbone main layer, pooling, dropout and a dense head."""

import tensorflow as tf
import tf_keras

from tfpeft.errors import ConfigError

POOLINGS = ("mean", "cls", "last", "pooler")


@tf_keras.utils.register_keras_serializable(package="tfpeft")
class SequencePooling(tf_keras.layers.Layer):
    """Pool a sequence of hidden states ``[batch, length, dim]`` into ``[batch, dim]``.

    ``mean`` averages the hidden states of real tokens (attention mask 1), the pooling
    all-MiniLM-L6-v2 was trained with. ``cls`` takes the first token's hidden state. ``last``
    takes the hidden state of the last real token, because a decoder such as GPT-2 lets only
    that token see the whole text. The ``pooler`` pooling uses the backbone's own pooler output
    and needs no layer of this kind.

    Args:
        mode: str. ``mean``, ``cls`` or ``last``.
    """

    def __init__(self, mode="mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("mean", "cls", "last"):
            raise ConfigError(f"SequencePooling mode must be 'mean', 'cls' or 'last'; got {mode!r}.")
        self.mode = mode

    def call(self, hidden_states, attention_mask):
        if self.mode == "cls":
            return hidden_states[:, 0]
        if self.mode == "last":
            # The highest position whose mask is 1, so left and right padding both work. An
            # all-padding row, even one of length 0 (an empty text for GPT-2, which adds no
            # special tokens), pools to the zero vector appended after the last position.
            mask = tf.cast(attention_mask, tf.int32)
            length = tf.shape(mask)[1]
            positions = mask * tf.range(1, length + 1)[tf.newaxis, :]
            # The zero column in front keeps reduce_max defined when the length is 0.
            last = tf.reduce_max(tf.pad(positions, [[0, 0], [1, 0]]), axis=1) - 1
            last = tf.where(last >= 0, last, length)
            padded = tf.pad(hidden_states, [[0, 0], [0, 1], [0, 0]])
            return tf.gather(padded, last, axis=1, batch_dims=1)
        mask = tf.cast(attention_mask, hidden_states.dtype)[:, :, tf.newaxis]
        total = tf.reduce_sum(hidden_states * mask, axis=1)
        # An all-padding row (count 0) pools to zeros instead of NaN.
        count = tf.maximum(tf.reduce_sum(mask, axis=1), tf.constant(1e-9, hidden_states.dtype))
        return total / count

    def get_config(self):
        config = super().get_config()
        config["mode"] = self.mode
        return config


def build_classifier(
    backbone, num_labels, *, pooling="mean", dropout=0.1, token_type_ids=False, name="classifier"
):
    """Build a tf_keras functional classifier on ``backbone``'s main layer.

    Inputs are ``input_ids`` and ``attention_mask`` (int32, ``[batch, length]``, any length up
    to the backbone's position limit). Sentence pairs on backbones that take segment ids add
    ``token_type_ids``. The output is float32 logits, one per class. Build it inside the
    strategy scope that will train it.

    Args:
        backbone: a ``Backbone``.
        num_labels: int. Number of classes, at least 2.
        pooling: str. ``mean`` (over the attention mask), ``cls``, ``last`` (the last real
            token, for decoders such as GPT-2) or ``pooler``. ``backbone.spec.poolings`` lists
            the ones that apply to a family.
        dropout: float. Dropout rate before the head, in [0, 1).
        token_type_ids: bool. Add the ``token_type_ids`` input (segment ids of sentence pairs).
            Single-text models leave it out, and the backbone then uses segment 0 throughout.
        name: str. The model name.

    Returns:
        A ``tf_keras.Model``.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"Unknown pooling {pooling!r}; use one of: {', '.join(POOLINGS)}.")
    if pooling not in backbone.spec.poolings or (pooling == "pooler" and backbone.pooler is None):
        raise ConfigError(
            f"pooling={pooling!r} does not apply to this {backbone.config.model_type} backbone; "
            f"use one of: {', '.join(p for p in backbone.spec.poolings if p != 'pooler' or backbone.pooler)}."
        )
    if not isinstance(num_labels, int) or num_labels < 2:
        raise ConfigError(f"A classifier needs num_labels >= 2; got {num_labels!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1); got {dropout!r}.")

    # Layers.
    inputs = {
        "input_ids": tf_keras.Input(shape=(None,), dtype=tf.int32, name="input_ids"),
        "attention_mask": tf_keras.Input(shape=(None,), dtype=tf.int32, name="attention_mask"),
    }
    if token_type_ids:
        inputs["token_type_ids"] = tf_keras.Input(shape=(None,), dtype=tf.int32, name="token_type_ids")
    head_dropout = tf_keras.layers.Dropout(dropout, name="head_dropout")
    head = tf_keras.layers.Dense(num_labels, dtype="float32", name="head")

    # Functional graph.
    outputs = backbone.main_layer(**inputs, **dict(backbone.spec.call_arguments))
    if pooling == "pooler":
        pooled = outputs.pooler_output
    else:
        pooled = SequencePooling(pooling, name=f"{pooling}_pooling")(
            outputs.last_hidden_state, inputs["attention_mask"]
        )
    logits = head(head_dropout(pooled))
    return tf_keras.Model(inputs=inputs, outputs=logits, name=name)
