"""LoRA: low-rank adapters on the dense layers of a backbone, their merge, and adapter files.

LoRA (Hu et al., 2021) leaves a dense layer's kernel ``W`` ``[in, out]`` frozen and learns a
low-rank update: the layer computes ``x @ W + b + dropout(x) @ A @ B * alpha / r`` with
``A`` ``[in, r]`` drawn at random and ``B`` ``[r, out]`` starting at zero, so the model's
outputs at initialisation are exactly the base model's. ``A`` and ``B`` are Keras-ordered
(``[in, out]`` like the kernel); PyTorch writes the same update as ``B @ A``.

The adapter lives inside the targeted layer itself: ``lora_a`` and ``lora_b`` are added to a
tf_keras ``Dense`` (or GPT-2's ``TFConv1D``) with ``add_weight``, and the layer's ``call`` is
replaced by one that adds the low-rank path. Nothing else moves, so the base kernel keeps its
stable name (``encoder/layer_._0/attention/self/query/kernel``), the adapter's names sit next
to it (``.../query/lora_a``), and TF checkpoints, which follow attributes, still match.

``merge_adapters`` folds ``A @ B * alpha / r`` into the kernels and turns the low-rank path
off, so the merged model computes what the base architecture computes, at its cost.
``unmerge_adapters`` takes the update out again.
"""

import dataclasses
import functools
import hashlib
import json
import re
import zipfile
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras

from tfpeft.errors import ConfigError, RunFolderError

# The attention query and value projections of each family, the targets of the LoRA paper.
DEFAULT_TARGETS = {
    "bert": "query|value",
    "roberta": "query|value",
    "xlm-roberta": "query|value",
    "electra": "query|value",
    "albert": "query|value",
    "distilbert": "q_lin|v_lin",
    "deberta-v2": "query_proj|value_proj",
    "mpnet": "q|v",
    # GPT-2 computes query, key and value with one fused projection.
    "gpt2": "c_attn",
    "t5": "q|v",
}
ALL_LINEAR = "all-linear"
LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "combine")
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_weights.npz"
# Variable names of the adapter inside a targeted layer.
LORA_A = "lora_a"
LORA_B = "lora_b"
# Attribute that holds a targeted layer's ``LoraState``; set untracked, it is no checkpoint entry.
_STATE = "_tfpeft_lora"
# Config keys that say where or how a config was written, not what the model is.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "architectures", "torch_dtype")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Settings of LoRA adapters.

    Args:
        r: int. The rank of the update, at least 1.
        alpha: float. The update is scaled by ``alpha / r``; None means ``2 * r``.
        dropout: float. Dropout on the input of the low-rank path while training, in [0, 1).
        target_modules: str or None. Which dense layers of the blocks get an adapter: a regular
            expression that must match a layer's last name (``query``) or its whole stable
            name (``encoder/layer_._1/attention/self/query``) in full, so ``query|value``
            targets both projections. ``all-linear`` targets every dense layer of the blocks.
            None takes the family's attention query and value projections (``DEFAULT_TARGETS``).
        combine: str or None. Another policy whose variables train as well, such as ``bitfit``.

    Example:

    >>> tfpeft.parse_policy("lora:r=8,alpha=16,target_modules=query|value").lora
    LoraConfig(r=8, alpha=16.0, dropout=0.0, target_modules='query|value', combine=None)
    """

    r: int = 8
    alpha: Optional[float] = None
    dropout: float = 0.0
    target_modules: Optional[str] = None
    combine: Optional[str] = None

    def __post_init__(self):
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise ConfigError(f"LoRA rank r must be an integer of at least 1, as in 'lora:r=8'; got r={self.r!r}.")
        alpha = 2.0 * self.r if self.alpha is None else self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ConfigError(f"LoRA alpha must be a positive number, as in 'lora:alpha=16'; got alpha={self.alpha!r}.")
        object.__setattr__(self, "alpha", float(alpha))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRA dropout must be in [0, 1); got dropout={self.dropout!r}.")
        object.__setattr__(self, "dropout", float(self.dropout))
        if isinstance(self.target_modules, (list, tuple)):
            joined = "|".join(f"(?:{target})" for target in self.target_modules)
            object.__setattr__(self, "target_modules", joined)
        if self.target_modules is not None:
            if not isinstance(self.target_modules, str) or not self.target_modules:
                raise ConfigError(f"LoRA target_modules must be a non-empty regular expression; got {self.target_modules!r}.")
            if self.target_modules != ALL_LINEAR:
                try:
                    re.compile(self.target_modules)
                except re.error as error:
                    raise ConfigError(
                        f"LoRA target_modules={self.target_modules!r} is not a valid regular expression ({error})."
                    ) from error
        if self.combine is not None:
            from tfpeft.policies import parse_policy

            combined = parse_policy(self.combine)
            if combined.kind in ("lora", "full"):
                raise ConfigError(
                    f"LoRA combine={self.combine!r} makes no sense: combine adds a policy's "
                    "variables to the adapters, e.g. combine=bitfit or combine=layernorm."
                )

    @property
    def scaling(self):
        """The factor ``alpha / r`` of the low-rank update."""
        return self.alpha / self.r

    @property
    def name(self):
        """The policy as written on the command line; ``parse_policy`` reads it back."""
        fields = [f"r={self.r}", f"alpha={_number(self.alpha)}"]
        if self.dropout:
            fields.append(f"dropout={_number(self.dropout)}")
        if self.target_modules is not None:
            fields.append(f"target_modules={self.target_modules}")
        if self.combine is not None:
            fields.append(f"combine={self.combine}")
        return "lora:" + ",".join(fields)

    def targets_for(self, model_type):
        """Return the ``target_modules`` expression used on a ``model_type`` backbone."""
        if self.target_modules is not None:
            return self.target_modules
        return DEFAULT_TARGETS.get(model_type, "query|value")

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _number(value):
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_lora_fields(text, argument):
    """Return a ``LoraConfig`` from the part after ``lora:``, e.g. ``r=8,alpha=16``."""
    fields = {}
    if argument.endswith(","):
        raise ConfigError(f"Invalid policy {text!r}: it ends with a comma. Remove it, as in 'lora:r=8,alpha=16'.")
    # Split only where a comma starts the next key, so commas inside a regex ({1,3}) stay.
    pattern = r",(?=(?:" + "|".join(LORA_KEYS) + r")=)"
    for piece in re.split(pattern, argument) if argument else []:
        key, separator, value = piece.partition("=")
        if not separator or key not in LORA_KEYS:
            raise ConfigError(
                f"Invalid policy {text!r}: expected KEY=VALUE with KEY one of {', '.join(LORA_KEYS)} "
                f"after 'lora:', got {piece!r}."
            )
        if key in fields:
            raise ConfigError(f"Invalid policy {text!r}: {key}= is given twice.")
        fields[key] = value
    converters = {"r": (int, "an integer of at least 1"), "alpha": (float, "a number"), "dropout": (float, "a number")}
    for key, (convert, expected) in converters.items():
        if key in fields:
            try:
                fields[key] = convert(fields[key])
            except ValueError:
                raise ConfigError(f"Invalid policy {text!r}: {key} must be {expected}, got {fields[key]!r}.") from None
    return LoraConfig(**fields)


@dataclasses.dataclass
class LoraState:
    """The adapter of one targeted layer: its variables, settings and whether it is merged."""

    name: str
    a: tf.Variable
    b: tf.Variable
    kernel: tf.Variable
    scaling: float
    dropout: Optional[tf_keras.layers.Layer]
    original_call: object
    merged: bool = False


def is_dense(layer):
    """Return whether ``layer`` is a dense projection LoRA can wrap: Keras ``Dense`` or ``TFConv1D``."""
    return isinstance(layer, tf_keras.layers.Dense) or type(layer).__name__ == "TFConv1D"


def _kernel(layer):
    return layer.weight if type(layer).__name__ == "TFConv1D" else layer.kernel


def block_dense_layers(backbone):
    """Return ``(stable name, layer)`` of every dense layer inside the blocks, in name order."""
    in_blocks = set()
    for part in backbone.parts():
        if part.role in ("block", "shared_block"):
            for layer in part.layers:
                for sub in layer._flatten_layers(include_self=True, recursive=True):
                    in_blocks.add(id(sub))
    return [(name, layer) for name, layer in backbone.named_layers() if id(layer) in in_blocks and is_dense(layer)]


def select_targets(backbone, config):
    """Return ``(stable name, layer)`` of the dense layers ``config`` targets on ``backbone``."""
    candidates = block_dense_layers(backbone)
    targets = config.targets_for(backbone.config.model_type)
    if targets == ALL_LINEAR:
        chosen = candidates
    else:
        expression = re.compile(targets)
        chosen = [
            (name, layer)
            for name, layer in candidates
            if expression.fullmatch(name.rsplit("/", 1)[-1]) or expression.fullmatch(name)
        ]
    if not chosen:
        first_block = _first_block_prefix(candidates)
        listed = [name for name, _ in candidates if name.startswith(first_block)] or [n for n, _ in candidates]
        comma_hint = " Separate several names with | (query|value), not a comma." if "," in targets else ""
        raise ConfigError(
            f"LoRA target_modules={targets!r} matches no dense layer of this "
            f"{backbone.config.model_type} backbone. Its dense layers in the first block are: "
            f"{', '.join(listed)} (and the same in every other block). Give one of their last "
            "names (such as the last part of those above), a regular expression matching whole "
            f"names, or {ALL_LINEAR!r}.{comma_hint}"
        )
    return chosen


def _first_block_prefix(candidates):
    if not candidates:
        return ""
    first = candidates[0][0]
    match = re.match(r"(.*?(?:\.|_)_?\d+/)", first)
    return match.group(1) if match else ""


def adapters(backbone):
    """Return ``{stable name: LoraState}`` of the adapters applied to ``backbone``."""
    return {
        name: getattr(layer, _STATE)
        for name, layer in backbone.named_layers()
        if getattr(layer, _STATE, None) is not None
    }


def applied_config(backbone):
    """Return the ``LoraConfig`` the backbone's adapters were applied with, or None."""
    return getattr(backbone, "_tfpeft_lora_config", None)


def apply_adapters(backbone, config):
    """Add LoRA adapters to the dense layers ``config`` targets; return their variables.

    Applying the same settings again returns the existing adapters; other settings on a
    backbone that has adapters raise ``ConfigError``, because the adapters' variables are
    already part of the model. Build it inside the strategy scope that trains the model.
    """
    current = applied_config(backbone)
    if current is not None:
        if (current.r, current.alpha, current.dropout, current.targets_for(backbone.config.model_type)) != (
            config.r, config.alpha, config.dropout, config.targets_for(backbone.config.model_type)
        ):
            raise ConfigError(
                f"This backbone has LoRA adapters {current.name} already; load the backbone "
                f"again to apply {config.name}."
            )
        return adapter_variables(backbone)

    targets = select_targets(backbone, config)
    shapes = {name: [int(dim) for dim in _kernel(layer).shape] for name, layer in targets}
    narrowest = min(shapes, key=lambda name: min(shapes[name]))
    width = min(shapes[narrowest])
    if config.r > width:
        # A rank above a layer's smaller side adds parameters without adding expressiveness.
        raise ConfigError(
            f"LoRA rank r={config.r} is larger than the targeted layer {narrowest} allows: its "
            f"kernel is {' x '.join(map(str, shapes[narrowest]))}. Use r in 1..{width}; low ranks "
            "such as 4 to 16 are usual."
        )
    for name, layer in targets:
        # A new unseeded initializer per layer draws from the global seed that
        # tf_keras.utils.set_random_seed sets, and differs from layer to layer.
        _add_adapter(layer, name, config, tf_keras.initializers.HeUniform())
    object.__setattr__(backbone, "_tfpeft_lora_config", config)
    return adapter_variables(backbone)


def _add_adapter(layer, name, config, initializer):
    kernel = _kernel(layer)
    in_dim, out_dim = (int(dim) for dim in kernel.shape)
    # Absolute name scope next to the kernel, so the variables read ``.../query/lora_a:0``.
    scope = kernel.name.split(":")[0].rsplit("/", 1)[0] + "/"
    with tf.name_scope(scope):
        a = layer.add_weight(LORA_A, shape=(in_dim, config.r), initializer=initializer, dtype=kernel.dtype)
        b = layer.add_weight(LORA_B, shape=(config.r, out_dim), initializer="zeros", dtype=kernel.dtype)
    dropout = tf_keras.layers.Dropout(config.dropout) if config.dropout else None
    state = LoraState(name, a, b, kernel, config.scaling, dropout, layer.call)
    object.__setattr__(layer, _STATE, state)
    _enable_path(layer, state)


def _enable_path(layer, state):
    original = state.original_call

    @functools.wraps(original)
    def call_with_adapter(inputs, *args, **kwargs):
        outputs = original(inputs, *args, **kwargs)
        x = state.dropout(inputs) if state.dropout is not None else inputs
        x = tf.cast(x, state.a.dtype)
        update = tf.einsum("...i,ir->...r", x, state.a)
        update = tf.einsum("...r,ro->...o", update, state.b) * state.scaling
        return outputs + tf.cast(update, outputs.dtype)

    # Set untracked: an instance attribute ``call`` must not become a checkpoint dependency.
    object.__setattr__(layer, "call", call_with_adapter)


def _disable_path(layer, state):
    object.__setattr__(layer, "call", state.original_call)


def adapter_variables(backbone):
    """Return every ``lora_a`` and ``lora_b`` variable of the backbone, in layer name order."""
    return [variable for state in adapters(backbone).values() for variable in (state.a, state.b)]


def is_adapter_variable(variable, backbone):
    return id(variable) in {id(v) for v in adapter_variables(backbone)}


def _forget_traced_functions(models):
    # Keras keeps the train, test and predict functions it traced, low-rank path included;
    # a merged kernel under a stale trace would add the update twice.
    for model in models:
        model.train_function = model.test_function = model.predict_function = None


def merge_adapters(backbone, *models):
    """Fold each adapter's ``A @ B * alpha / r`` into its kernel and turn its low-rank path off.

    The merged backbone computes the same function without the extra matrix products. Merging
    twice does nothing the second time. Pass the Keras models built on the backbone that have
    run ``fit``, ``evaluate`` or ``predict``, so they trace their functions again.
    Returns the number of layers merged.
    """
    _forget_traced_functions(models)
    merged = 0
    for layer in _adapted_layers(backbone):
        state = getattr(layer, _STATE)
        if state.merged:
            continue
        state.kernel.assign_add(_delta(state))
        _disable_path(layer, state)
        state.merged = True
        merged += 1
    return merged


def unmerge_adapters(backbone, *models):
    """Take the merged updates out of the kernels again and turn the low-rank paths back on.

    ``models`` as for ``merge_adapters``.
    """
    _forget_traced_functions(models)
    for layer in _adapted_layers(backbone):
        state = getattr(layer, _STATE)
        if not state.merged:
            continue
        state.kernel.assign_sub(_delta(state))
        _enable_path(layer, state)
        state.merged = False


def reset_adapters(backbone):
    """Draw every adapter's A anew and set its B to zero, as at initialisation; unmerge first."""
    unmerge_adapters(backbone)
    for state in adapters(backbone).values():
        state.a.assign(tf_keras.initializers.HeUniform()(state.a.shape, dtype=state.a.dtype))
        state.b.assign(tf.zeros_like(state.b))


def drop_adapters(backbone, *models):
    """Delete the adapters without merging them: the backbone is the base model again."""
    unmerge_adapters(backbone, *models)
    _delete_adapters(backbone)


def remove_adapters(backbone, *models):
    """Merge the adapters, then delete their variables: the backbone is the base architecture again.

    Used before export, so the exported model holds the base model's variables only.
    ``models`` as for ``merge_adapters``.
    """
    merge_adapters(backbone, *models)
    _delete_adapters(backbone)


def _delete_adapters(backbone):
    for layer in _adapted_layers(backbone):
        state = getattr(layer, _STATE)
        ids = {id(state.a), id(state.b)}
        for attribute in ("_trainable_weights", "_non_trainable_weights"):
            getattr(layer, attribute)[:] = [v for v in getattr(layer, attribute) if id(v) not in ids]
        original = getattr(layer, "_tfpeft_original_trainable_weights", None)
        if original is not None:
            original[:] = [v for v in original if id(v) not in ids]
        for name in (LORA_A, LORA_B):
            # add_weight tracked the variables as checkpoint dependencies under these names.
            layer._unconditional_checkpoint_dependencies[:] = [
                dep for dep in layer._unconditional_checkpoint_dependencies if dep.name != name
            ]
            layer._unconditional_dependency_names.pop(name, None)
        _disable_path(layer, state)
        object.__delattr__(layer, _STATE)
    object.__setattr__(backbone, "_tfpeft_lora_config", None)


def _adapted_layers(backbone):
    return [layer for _, layer in backbone.named_layers() if getattr(layer, _STATE, None) is not None]


def _delta(state):
    return tf.matmul(state.a, state.b) * tf.cast(state.scaling, state.a.dtype)


# Adapter files.


def config_fingerprint(config):
    """Return a SHA-256 of a transformers config's model settings, without where it was saved."""
    data = {key: value for key, value in config.to_dict().items() if key not in _VOLATILE_CONFIG_KEYS}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _size_summary(config):
    return {
        "model_type": config.model_type,
        "hidden_size": getattr(config, "hidden_size", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
        "vocab_size": getattr(config, "vocab_size", None),
    }


def trained_variables(model, backbone):
    """Return ``(stable name, variable)`` of what an adapter run saves: adapters, head, trained parts.

    That is every variable the optimizer updates, plus the adapters even where frozen.
    """
    names = {id(variable): name for name, variable in backbone.named_variables()}
    backbone_ids = {id(variable) for variable in backbone.main_layer.weights}
    wanted = {id(v): v for v in model.trainable_variables}
    wanted.update({id(v): v for v in adapter_variables(backbone)})
    named = []
    for layer in model.layers:
        if layer is backbone.main_layer:
            continue
        for variable in layer.weights:
            if id(variable) not in backbone_ids and id(variable) in wanted:
                named.append((f"{layer.name}/{variable.name.split(':')[0].rsplit('/', 1)[-1]}", variable))
    for variable in wanted.values():
        if id(variable) in backbone_ids:
            named.append((names[id(variable)], variable))
    return sorted(named, key=lambda pair: pair[0])


def save_adapter(model_dir, model, backbone, label_names, base_model):
    """Write the adapter weights and ``adapter_config.json`` of a LoRA classifier to ``model_dir``."""
    config = applied_config(backbone)
    named = trained_variables(model, backbone)
    np.savez(
        f"{model_dir}/{ADAPTER_WEIGHTS_FILE}",
        **{name: variable.numpy() for name, variable in named},
    )
    data = {
        "base_model": base_model,
        "base_config_sha256": config_fingerprint(backbone.config),
        "base_config": _size_summary(backbone.config),
        "r": config.r,
        "alpha": config.alpha,
        "dropout": config.dropout,
        "target_modules": config.targets_for(backbone.config.model_type),
        "combine": config.combine,
        "targeted_layers": sorted(adapters(backbone)),
        "label_map": list(label_names),
        "weights": [name for name, _ in named],
    }
    with open(f"{model_dir}/{ADAPTER_CONFIG_FILE}", "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
        file.write("\n")


def read_adapter_config(model_dir):
    path = f"{model_dir}/{ADAPTER_CONFIG_FILE}"
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        raise RunFolderError(f"{path!r} does not exist, so this run folder contains no LoRA adapter.") from None
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path!r} is not valid JSON ({error}); the adapter run folder is damaged.") from None


def check_base(adapter_config, backbone, path):
    """Raise ``RunFolderError`` when ``backbone`` is not the base the adapter was trained on."""
    expected = adapter_config["base_config"]
    got = _size_summary(backbone.config)
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"):
        if expected.get(key) != got.get(key):
            raise RunFolderError(
                f"The adapter in {path!r} was trained on a {expected['model_type']} backbone with "
                f"{key}={expected.get(key)!r} ({adapter_config['base_model']}), but the backbone "
                f"{backbone.source!r} has {key}={got.get(key)!r}. Load it onto its own base "
                "model (tfpeft.load(run_dir) without base_model, or base_model=that folder)."
            )
    if adapter_config["base_config_sha256"] != config_fingerprint(backbone.config):
        raise RunFolderError(
            f"The adapter in {path!r} was trained on a backbone whose config hashes to "
            f"{adapter_config['base_config_sha256'][:12]}, but the backbone {backbone.source!r} "
            f"hashes to {config_fingerprint(backbone.config)[:12]}: same size, other settings. "
            "Load it onto the base model it was trained on."
        )


def load_adapter(model_dir, model, backbone):
    """Assign the weights of an adapter run's ``model_dir`` to ``model`` and its adapted backbone.

    The backbone must have adapters of the same rank on the same layers (``apply_policy`` with
    the run's policy); anything else fails with an error that names both values.
    """
    adapter_config = read_adapter_config(model_dir)
    check_base(adapter_config, backbone, model_dir)
    config = applied_config(backbone)
    if config is None or config.r != adapter_config["r"]:
        raise RunFolderError(
            f"The adapter in {model_dir!r} has rank r={adapter_config['r']}, but the backbone's "
            f"adapters have r={config.r if config else None}. Apply the run's policy "
            f"(lora:r={adapter_config['r']},...) before loading."
        )
    if sorted(adapters(backbone)) != adapter_config["targeted_layers"]:
        raise RunFolderError(
            f"The adapter in {model_dir!r} targets {', '.join(adapter_config['targeted_layers'][:4])}..., "
            f"but the backbone's adapters are on {', '.join(sorted(adapters(backbone))[:4])}.... "
            "Apply the run's target_modules before loading."
        )
    path = f"{model_dir}/{ADAPTER_WEIGHTS_FILE}"
    try:
        with np.load(path) as stored:
            values = {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        raise RunFolderError(
            f"The adapter run folder is damaged: {path!r} is missing. Train the run again, or "
            "restore the folder from a copy."
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise RunFolderError(
            f"The adapter run folder is damaged: {path!r} cannot be read ({error}). Train the run "
            "again, or restore the folder from a copy."
        ) from None
    named = dict(trained_variables(model, backbone))
    missing = sorted(set(named) - set(values))
    unexpected = sorted(set(values) - set(named))
    if missing or unexpected:
        raise RunFolderError(
            f"The adapter weights {path!r} do not fit the model: missing {missing[:5]}, "
            f"not in the model {unexpected[:5]}. The run's policy or head differs from this model's."
        )
    for name, variable in named.items():
        if tuple(values[name].shape) != tuple(variable.shape):
            raise RunFolderError(
                f"The adapter weight {name!r} in {path!r} has shape {list(values[name].shape)}, "
                f"but the model's has {list(variable.shape)}."
            )
        variable.assign(values[name])
    return adapter_config
