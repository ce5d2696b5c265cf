"""Bind ``tf.keras`` to tf_keras (Keras 2) before TensorFlow picks Keras 3.

transformers 4.54's TF model classes run only on the Keras 2 API. TensorFlow 2.16 and later
bind ``tf.keras`` to Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` is set before ``tf.keras`` is
first touched, and the choice cannot be undone in a running process.
"""

import os
import sys

from tfpeft.errors import KerasVersionError


def ensure_legacy_keras():
    """Set ``TF_USE_LEGACY_KERAS=1`` and check that ``tf.keras`` is tf_keras.

    Raises:
        KerasVersionError: ``tf.keras`` was already bound to Keras 3 in this process, for
            example because a notebook cell touched ``tf.keras`` before importing tfpeft.
    """
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    if "tensorflow" not in sys.modules:
        # Hide TensorFlow's C++ info lines (oneDNN, CUDA probing); warnings still show.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        return

    import tensorflow as tf
    import tf_keras

    if tf.keras.Model is not tf_keras.Model:
        raise KerasVersionError(
            "tf.keras is already bound to Keras 3 in this process, but tfpeft and the "
            "transformers TF model classes need tf_keras (the Keras 2 API). Restart the "
            "Python process and import tfpeft before TensorFlow touches tf.keras, or set "
            "the environment variable TF_USE_LEGACY_KERAS=1 before starting Python."
        )
