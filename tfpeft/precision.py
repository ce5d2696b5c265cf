"""Mixed precision: the backbone computes in 16-bit floats, the head and the loss in float32.

Keras layers take their dtype policy from the global policy when they are created, so the
policy is set before the backbone is loaded and the classifier built, and set back afterwards
so that later models in the same process are not affected. The head is a float32 layer in
every case (``tfpeft.model``), so the logits, the softmax and the loss stay float32. With
``mixed_float16`` tf_keras' ``compile`` wraps the optimizer in a ``LossScaleOptimizer``, which
keeps small float16 gradients from rounding to zero; bfloat16 has float32's range and needs none.
"""

import contextlib
import logging

import tensorflow as tf
import tf_keras

from tfpeft.errors import ConfigError

logger = logging.getLogger("tfpeft.precision")


def mixed_policy_name():
    """Return ``mixed_float16`` where a GPU is visible, else ``mixed_bfloat16``."""
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def _check_bfloat16():
    try:
        product = tf.matmul(tf.ones([2, 2], tf.bfloat16), tf.ones([2, 2], tf.bfloat16))
        float(tf.reduce_sum(tf.cast(product, tf.float32)))
    except (tf.errors.OpError, TypeError) as error:
        raise ConfigError(
            "mixed_precision=True needs bfloat16 matrix products on this CPU, which this "
            f"TensorFlow build cannot run ({type(error).__name__}: {error}). Drop --mixed-precision."
        ) from error


@contextlib.contextmanager
def precision_policy(enabled):
    """Set the global tf_keras dtype policy for mixed precision while the block runs.

    Args:
        enabled: bool. False leaves the policy as it is.

    Yields:
        str. The name of the policy in force.
    """
    previous = tf_keras.mixed_precision.global_policy()
    if not enabled:
        yield previous.name
        return
    name = mixed_policy_name()
    if name == "mixed_bfloat16":
        _check_bfloat16()
    tf_keras.mixed_precision.set_global_policy(name)
    logger.info("Mixed precision: the backbone computes in %s, the head and the loss in float32", name.split("_")[1])
    try:
        yield name
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)
