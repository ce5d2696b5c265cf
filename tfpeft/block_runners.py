"""Run a backbone's blocks on hidden states taken at a depth, as the family's main layer does.

The feature cache keeps the hidden states that enter block ``d``; training then runs blocks
``d`` and up on them. Each family's main layer calls its blocks in its own way, so
``BlockRunner`` has one small routine per registered family that repeats exactly what the main
layer does between two depths:

- BERT, RoBERTa, XLM-R, ELECTRA: the additive mask ``(1 - mask) * -10000``;
- DistilBERT: the float ``[batch, length]`` mask, which its attention turns into ``-inf``;
- ALBERT: one layer group per depth (the same shared group at several depths);
- DeBERTa-v2: the encoder's own mask, relative positions and (normalized) relative
  embeddings, and block 0's convolution over the block's input;
- MPNet: the relative attention bias, computed from the positions by the encoder;
- GPT-2: the padding mask (its attention adds the causal mask) and ``ln_f`` after the last
  block;
- T5: the position bias of block 0's attention table plus the ``-1e9`` mask, given to every
  block, and the final layer norm and dropout after the last block.

Shared position tables (MPNet's, DeBERTa-v2's, T5's) are read where they are, so a table that
stays frozen under ``last_n:K`` still shapes the top blocks, and one that trains gets its
gradient. Layers frozen by a policy run in inference mode as in the full model, because the
runner calls the same layer objects.
"""

import tensorflow as tf
import tf_keras

BERT_STYLE_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra")


def _additive_mask(attention_mask, dtype, value):
    mask = tf.cast(attention_mask, dtype)[:, tf.newaxis, tf.newaxis, :]
    return (1.0 - mask) * value


class BlockRunner(tf_keras.layers.Layer):
    """Run depths ``start`` to ``stop - 1`` of ``backbone`` on the hidden states entering ``start``.

    Args:
        backbone: a ``Backbone``.
        start: int. The depth whose input the hidden states are.
        stop: int or None. The depth to stop before; default the block count.
        finish: bool or None. Apply what follows the last block (GPT-2's ``ln_f``, T5's final
            layer norm and dropout). Default: when ``stop`` is the block count.

    Called as ``runner(hidden_states, attention_mask, training=...)`` with ``hidden_states``
    ``[batch, length, hidden]`` and ``attention_mask`` ``[batch, length]`` (1 for tokens).
    """

    def __init__(self, backbone, start, stop=None, finish=None, **kwargs):
        super().__init__(**kwargs)
        num_blocks = backbone.num_blocks
        stop = num_blocks if stop is None else stop
        if not 0 <= start <= stop <= num_blocks:
            raise ValueError(f"Invalid block range {start}..{stop} of a {num_blocks}-block backbone")
        self.start, self.stop = start, stop
        self.finish = stop == num_blocks if finish is None else finish
        self.model_type = backbone.config.model_type
        if self.model_type not in _RUNNERS:
            raise ValueError(f"No block runner for model_type {self.model_type!r}")
        # Tracked, so the trained blocks' variables are this layer's trainable variables.
        self.main_layer = backbone.main_layer
        self.depth_blocks = backbone.blocks

    def call(self, hidden_states, attention_mask, training=None):
        return _RUNNERS[self.model_type](self, hidden_states, attention_mask, bool(training))

    def _depths(self):
        return range(self.start, self.stop)


def _run_bert_style(runner, hidden, mask, training):
    extended = _additive_mask(mask, hidden.dtype, -10000.0)
    for depth in runner._depths():
        hidden = runner.depth_blocks[depth](hidden, extended, None, None, None, None, False, training=training)[0]
    return hidden


def _run_distilbert(runner, hidden, mask, training):
    mask = tf.cast(mask, tf.float32)
    for depth in runner._depths():
        hidden = runner.depth_blocks[depth](hidden, mask, None, False, training=training)[-1]
    return hidden


def _run_albert(runner, hidden, mask, training):
    extended = _additive_mask(mask, hidden.dtype, -10000.0)
    for depth in runner._depths():
        group = runner.depth_blocks[depth]
        hidden = group(
            hidden_states=hidden,
            attention_mask=extended,
            head_mask=[None] * len(group.albert_layers),
            output_attentions=False,
            output_hidden_states=False,
            training=training,
        )[0]
    return hidden


def _run_deberta_v2(runner, hidden, mask, training):
    encoder = runner.main_layer.encoder
    block_input = hidden
    attention = encoder.get_attention_mask(mask)
    relative_pos = encoder.get_rel_pos(hidden)
    rel_embeddings = encoder.get_rel_embedding()
    for depth in runner._depths():
        output = runner.depth_blocks[depth](
            hidden_states=hidden,
            attention_mask=attention,
            relative_pos=relative_pos,
            rel_embeddings=rel_embeddings,
            output_attentions=False,
            training=training,
        )[0]
        if depth == 0 and encoder.conv is not None:
            # The convolution reads the encoder's input, which is block 0's input.
            output = encoder.conv(block_input, output, mask, training=training)
        hidden = output
    return hidden


def _run_mpnet(runner, hidden, mask, training):
    extended = _additive_mask(mask, hidden.dtype, -10000.0)
    position_bias = runner.main_layer.encoder.compute_position_bias(hidden)
    for depth in runner._depths():
        hidden = runner.depth_blocks[depth](
            hidden, extended, None, False, position_bias=position_bias, training=training
        )[0]
    return hidden


def _run_gpt2(runner, hidden, mask, training):
    extended = _additive_mask(mask, tf.float32, -10000.0)
    for depth in runner._depths():
        hidden = runner.depth_blocks[depth](hidden, None, extended, None, None, None, False, False, training=training)[0]
    if runner.finish:
        hidden = runner.main_layer.ln_f(hidden)
    return hidden


def _run_t5(runner, hidden, mask, training):
    main = runner.main_layer
    extended = _additive_mask(mask, hidden.dtype, -1e9)
    length = tf.shape(hidden)[1]
    # Block 0's attention owns the table. The main layer hands its bias plus the mask to every
    # later block, and block 0 adds the mask to its own bias the same way.
    table_owner = main.block[0].layer[0].SelfAttention
    position_bias = tf.cast(table_owner.compute_bias(length, length), extended.dtype) + extended
    for depth in runner._depths():
        hidden = runner.depth_blocks[depth](
            hidden,
            attention_mask=extended,
            position_bias=position_bias,
            use_cache=False,
            output_attentions=False,
            training=training,
        )[0]
    if runner.finish:
        hidden = main.final_layer_norm(hidden)
        hidden = main.dropout(hidden, training=training)
    return hidden


_RUNNERS = {
    **{family: _run_bert_style for family in BERT_STYLE_FAMILIES},
    "distilbert": _run_distilbert,
    "albert": _run_albert,
    "deberta-v2": _run_deberta_v2,
    "mpnet": _run_mpnet,
    "gpt2": _run_gpt2,
    "t5": _run_t5,
}


def supported_families():
    """Return the model types ``BlockRunner`` runs."""
    return tuple(_RUNNERS)
