"""Make exactly a chosen set of variables trainable, down to single variables inside a layer.

Keras decides per layer what trains: ``model.trainable_variables`` gathers the variables of
every layer whose ``trainable`` flag is set, and ``fit`` hands that list to the optimizer. A
layer whose variables are all frozen gets ``trainable = False``, the public mechanism. A layer
with frozen and trainable variables stays trainable: BitFit, for one, trains a Dense layer's
bias but not its kernel. Each frozen variable of such a layer moves from the layer's
``_trainable_weights`` list to its ``_non_trainable_weights`` list. A tf_keras 2.x layer keeps
the variables it created in these two lists, and a frozen layer reports both as
non-trainable, so Keras itself treats moved variables like those of a frozen layer.

Nothing else changes: the variable objects and the attributes that hold them stay, so TF
checkpoints, which follow attributes, still match; ``model.trainable_variables``, the
optimizer's variables and the parameter report all see the same set. Changing the set after
``compile`` needs a new ``compile``, as with the ``trainable`` flag.
"""

import functools

# Attribute that records, on a layer, its trainable list before any variable was moved out.
_ORIGINAL_TRAINABLE = "_tfpeft_original_trainable_weights"
# Attribute that keeps a layer's own ``call`` while it runs in inference mode.
_ORIGINAL_CALL = "_tfpeft_original_call"


def _set_untracked(layer, name, value):
    # Layer.__setattr__ would track a list of variables as a checkpoint dependency.
    object.__setattr__(layer, name, value)


def restore_trainable(root):
    """Put every variable moved by ``set_trainable_variables`` back and make ``root`` trainable."""
    for layer in root._flatten_layers(include_self=True, recursive=True):
        original = getattr(layer, _ORIGINAL_TRAINABLE, None)
        if original is None:
            continue
        moved = {id(variable) for variable in original}
        layer._non_trainable_weights[:] = [v for v in layer._non_trainable_weights if id(v) not in moved]
        layer._trainable_weights[:] = original
        object.__delattr__(layer, _ORIGINAL_TRAINABLE)
    root.trainable = True


def set_trainable_variables(root, selected):
    """Make the variables in ``selected`` the only trainable variables under the layer ``root``.

    Layers with no selected variable get ``trainable = False``; layers with some get their
    other variables moved to their non-trainable list. Variables that were created
    non-trainable stay non-trainable. An earlier call's changes are undone first.

    Args:
        root: a tf_keras layer, such as a backbone's main layer.
        selected: collection of ``tf.Variable``.
    """
    restore_trainable(root)
    _restrict(root, {id(variable) for variable in selected})


def _restrict(layer, selected_ids):
    variables = layer.trainable_weights
    if not variables:
        return
    chosen = [variable for variable in variables if id(variable) in selected_ids]
    if not chosen:
        layer.trainable = False
        return
    if len(chosen) == len(variables):
        return

    for child in layer._flatten_layers(include_self=False, recursive=False):
        _restrict(child, selected_ids)
    frozen = [v for v in layer._trainable_weights if id(v) not in selected_ids]
    if frozen:
        _set_untracked(layer, _ORIGINAL_TRAINABLE, list(layer._trainable_weights))
        frozen_ids = {id(v) for v in frozen}
        layer._trainable_weights[:] = [v for v in layer._trainable_weights if id(v) not in frozen_ids]
        layer._non_trainable_weights.extend(frozen)


def set_inference_mode(layer, enabled):
    """Make ``layer`` ignore ``training=True`` from its caller, or undo that.

    The layer passes ``training=False`` to its sublayers, so their dropout is off too. Layers
    whose ``call`` takes no ``training`` argument (an embedding table, a pooler) behave the same
    in both modes and are left as they are.
    """
    original = getattr(layer, _ORIGINAL_CALL, None)
    if enabled and original is None and layer._call_spec.expects_training_arg:
        original = layer.call

        @functools.wraps(original)
        def call_in_inference_mode(*args, **kwargs):
            kwargs["training"] = False
            return original(*args, **kwargs)

        _set_untracked(layer, _ORIGINAL_CALL, original)
        layer.call = call_in_inference_mode
    elif not enabled and original is not None:
        layer.call = original
        object.__delattr__(layer, _ORIGINAL_CALL)
