"""Checkpoints of what trains: trainable variables and their optimizer state, by stable name.

An epoch changes only the trainable variables. So the checkpoints written during training, the
best weights so far and the backup a stopped run resumes from, contain only those, with the
optimizer's step count and its slots (AdamW's first and second moments) for each of them.
Under ``head`` on all-MiniLM-L6-v2 that is a few kilobytes an epoch instead of the 90 MB of
frozen weights. Under ``full`` it is every variable, as before. A resumed run takes its frozen
variables from the backbone it loads again.

Every variable is keyed by its stable name: ``Backbone.named_variables`` for the backbone
(``encoder/layer_._5/output/dense/kernel``) and the layer path for the rest (``head/kernel``).
Optimizer slots are keyed by the name of the variable they belong to, not by their position
in the optimizer. So a checkpoint restores into the same variables in any process, into a
model built again, and into the small model that trains on cached features.

A checkpoint also holds a SHA-256 of the frozen variables. Restoring it over other frozen
weights (the backbone folder changed between a stop and a resume) fails instead of mixing the
two.

Layout of a checkpoint, as ``tf.train.list_variables`` shows it (``checkpoint_names`` reads
it back)::

    trainable/weights/<name>        each trainable variable
    trainable/slots/<name>/<slot>   its optimizer slots, e.g. momentums, velocities
    trainable/optimizer/<name>      iterations, and the learning rate where it is a variable
    trainable/frozen_sha256         the fingerprint of the frozen variables
"""

import hashlib
import logging

import numpy as np
import tensorflow as tf

from tfpeft.errors import RunFolderError

logger = logging.getLogger("tfpeft.checkpoints")

ROOT = "trainable"
_VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_FINGERPRINT_KEY = f"{ROOT}/frozen_sha256/.ATTRIBUTES/py_state"


def variable_names(model, backbone=None):
    """Return ``(name, variable)`` for every variable of ``model`` and ``backbone``, names unique.

    Backbone variables take their ``Backbone.named_variables`` names. Every other variable is
    named by the path of Keras layer names from ``model`` to its layer, then its own name in
    that layer (``head/kernel``). Without a backbone, the whole model is named that way.

    Raises:
        RunFolderError: two variables would share a name, so a checkpoint could not tell them apart.
    """
    named = list(backbone.named_variables()) if backbone is not None else []
    seen = {id(variable) for _, variable in named}

    def visit(layer, prefix):
        for child in layer._flatten_layers(include_self=False, recursive=False):
            path = prefix + child.name
            for variable in child._trainable_weights + child._non_trainable_weights:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    named.append((f"{path}/{_name_in_layer(variable, child.name)}", variable))
            visit(child, path + "/")

    visit(model, "")
    names = [name for name, _ in named]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise RunFolderError(
            f"Variables of the model {model.name!r} share the names {', '.join(duplicates[:5])}, so a "
            "checkpoint cannot tell them apart. Give the layers that own them distinct names."
        )
    return named


def _name_in_layer(variable, layer_name):
    """Return what follows the owning layer's name in ``variable.name``, without ``:0``."""
    segments = variable.name.split(":")[0].split("/")
    for index in range(len(segments) - 2, -1, -1):
        if segments[index] == layer_name:
            return "/".join(segments[index + 1:])
    return segments[-1]


def frozen_fingerprint(named_frozen):
    """Return a SHA-256 of ``(name, variable)`` pairs: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, variable in sorted(named_frozen, key=lambda pair: pair[0]):
        value = np.ascontiguousarray(variable.numpy())
        digest.update(f"{name}|{value.dtype}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


class _Fingerprint(tf.train.experimental.PythonState):
    """The frozen variables' SHA-256, written into a checkpoint and read back from it."""

    def __init__(self, compute):
        self._compute = compute
        self._value = None
        self.restored = None

    @property
    def value(self):
        # Computed once, on the first write or check: the frozen variables do not change.
        if self._value is None:
            self._value = self._compute()
        return self._value

    def serialize(self):
        return self.value

    def deserialize(self, string_value):
        self.restored = string_value.decode() if isinstance(string_value, bytes) else string_value


def optimizer_slots(optimizer, variables):
    """Return ``{slot name: list}`` of ``optimizer``'s per-variable state, in ``variables``' order.

    Works for tf_keras optimizers (``tf_keras.optimizers.Optimizer``), which keep each kind of
    slot in a list indexed by variable, and for a ``LossScaleOptimizer`` around one. The
    optimizer is built on ``variables`` first when it has not trained yet.

    Raises:
        RunFolderError: the optimizer keeps state that is not a slot of one variable, which
            these checkpoints could not restore exactly.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not hasattr(inner, "_var_key") or not callable(getattr(inner, "build", None)):
        raise RunFolderError(
            f"The optimizer {type(inner).__name__} is not a tf_keras.optimizers.Optimizer, so the "
            "training checkpoint cannot key its state by variable name. Use tfpeft's AdamW "
            "(compile_classifier), or an optimizer from tf_keras.optimizers."
        )
    if not getattr(inner, "_built", False):
        inner.build(list(variables))
    num_variables = len(inner._index_dict)
    slots = {}
    for attribute, value in vars(inner).items():
        if (
            isinstance(value, list)
            and len(value) == num_variables
            and num_variables
            and all(isinstance(item, tf.Variable) for item in value)
        ):
            slots[attribute.lstrip("_")] = value
    covered = {id(inner.iterations)} | {id(item) for lists in slots.values() for item in lists}
    unknown = [item.name for item in inner.variables if id(item) not in covered]
    if unknown:
        raise RunFolderError(
            f"The optimizer {type(inner).__name__} keeps state that is not per variable "
            f"({', '.join(unknown[:5])}), so the training checkpoint cannot key it by variable "
            "name. Use tfpeft's AdamW (compile_classifier), or an optimizer from tf_keras.optimizers."
        )
    ordered = {}
    for slot, values in slots.items():
        ordered[slot] = [values[inner._index_dict[inner._var_key(variable)]] for variable in variables]
    return ordered


class TrainableState(tf.Module):
    """The objects a training checkpoint tracks: trainable variables, optimizer state, fingerprint.

    Args:
        model: tf_keras model. Its trainable variables are saved.
        backbone: ``Backbone`` or None. Names its variables; its frozen variables, also those
            outside ``model`` (below the cut of a cached-feature model), go into the fingerprint.
        optimizer: optimizer or None. None saves the weights alone, as the best-weights
            checkpoint does.
    """

    def __init__(self, model, backbone=None, optimizer=None):
        super().__init__(name=ROOT)
        named = variable_names(model, backbone)
        trainable_ids = {id(variable) for variable in model.trainable_variables}
        trainable = [(name, variable) for name, variable in named if id(variable) in trainable_ids]
        frozen = [(name, variable) for name, variable in named if id(variable) not in trainable_ids]
        self.names = [name for name, _ in trainable]
        self.weights = dict(trainable)
        if optimizer is not None:
            variables = [variable for _, variable in trainable]
            slots = optimizer_slots(optimizer, variables)
            self.slots = {
                name: {slot: values[index] for slot, values in slots.items()}
                for index, name in enumerate(self.names)
            }
            inner = getattr(optimizer, "inner_optimizer", optimizer)
            state = {"iterations": inner.iterations}
            if isinstance(getattr(inner, "_learning_rate", None), tf.Variable):
                state["learning_rate"] = inner._learning_rate
            loss_scale = getattr(optimizer, "_loss_scale", None) if optimizer is not inner else None
            if loss_scale is not None and not isinstance(loss_scale, float):
                # The dynamic loss scale of mixed_float16 training: its scale and step counter.
                state["loss_scale"] = loss_scale
            self.optimizer = state
        self.frozen_sha256 = _Fingerprint(lambda: frozen_fingerprint(frozen))


def check_fingerprint(state, path):
    """Raise ``RunFolderError`` when the checkpoint at ``path`` was written over other frozen weights."""
    restored = state.frozen_sha256.restored
    if restored is not None and restored != state.frozen_sha256.value:
        raise RunFolderError(
            f"The checkpoint {path} was written with other frozen weights than this model has "
            f"(SHA-256 {restored[:12]}... there, {state.frozen_sha256.value[:12]}... now): the "
            "backbone changed since it was written. Use the same backbone, or start the run "
            "again with --overwrite-output-dir."
        )


def save_trainable(model, path, backbone=None, state=None):
    """Write ``model``'s trainable variables (no optimizer state) as a checkpoint at ``path``.

    ``state``, a ``TrainableState`` of ``model`` without optimizer, is reused where given, so
    that the fingerprint of the frozen variables is computed once and not at every save.
    """
    state = state or TrainableState(model, backbone)
    return tf.train.Checkpoint(**{ROOT: state}).write(path)


def read_trainable(model, path, backbone=None):
    """Return the values saved by ``save_trainable``, in ``model.trainable_variables`` order.

    The model's variables are left unchanged.

    Raises:
        RunFolderError: the checkpoint lacks a trainable variable of ``model`` or was written
            over other frozen weights.
    """
    state = TrainableState(model, backbone)
    reader = tf.train.load_checkpoint(path)
    available = reader.get_variable_to_shape_map()
    if _FINGERPRINT_KEY in available:
        state.frozen_sha256.deserialize(reader.get_tensor(_FINGERPRINT_KEY))
        check_fingerprint(state, path)
    names = dict((id(variable), name) for name, variable in state.weights.items())
    values = []
    for variable in model.trainable_variables:
        key = weight_key(names[id(variable)])
        if key not in available:
            raise RunFolderError(
                f"The checkpoint {path} has no value for the trainable variable "
                f"{names[id(variable)]!r}: it was written for another policy or model."
            )
        values.append(reader.get_tensor(key))
    return values


def weight_key(name):
    """Return the checkpoint key of the trainable variable with stable name ``name``."""
    return f"{ROOT}/weights/{_escape(name)}{_VARIABLE_SUFFIX}"


def _escape(name):
    # TF checkpoints escape each object name this way, so that '/' keeps separating levels.
    return name.replace(".", "..").replace("/", ".S")


def _unescape(name):
    return name.replace(".S", "/").replace("..", ".")


def checkpoint_names(path):
    """Return the stable names in a checkpoint written here, as ``{"weights", "slots", "optimizer"}``.

    ``weights`` lists variable names, ``slots`` ``(variable name, slot)`` pairs, and
    ``optimizer`` the optimizer's own entries. Keys outside ``trainable/`` (a backup's epoch
    counter) are left out.
    """
    found = {"weights": [], "slots": [], "optimizer": []}
    for key, _ in tf.train.list_variables(path):
        if not key.startswith(ROOT + "/") or not key.endswith(_VARIABLE_SUFFIX):
            continue
        parts = key[len(ROOT) + 1 : -len(_VARIABLE_SUFFIX)].split("/")
        if parts[0] == "weights":
            found["weights"].append(_unescape(parts[1]))
        elif parts[0] == "slots":
            found["slots"].append((_unescape(parts[1]), _unescape(parts[2])))
        elif parts[0] == "optimizer":
            found["optimizer"].append("/".join(_unescape(part) for part in parts[1:]))
    return found
