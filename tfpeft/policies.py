"""Freezing policies: which backbone variables train, and the trainable-parameter report.

A policy selects backbone variables, and the classifier's head always trains. ``head``,
``last_n:K``, ``full`` and ``embeddings_frozen`` select whole parts of the backbone, as
``Backbone.parts`` lists them: the embeddings, the blocks, shared position tables, the final
layer norm and the pooler. ``bitfit``, ``layernorm`` and ``pattern`` select single variables in
every part. ``apply_policy`` makes exactly the selected variables trainable (see ``tfpeft.freezing``)
and runs every part without a selected variable in inference mode, so its dropout is off even
while the rest trains, which is the Keras transfer-learning convention. ``frozen_dropout=True``
keeps dropout on in frozen parts, as PyTorch does when a frozen module stays in train mode.

Parts that are not one block, the same rules on every family:

- the final layer norm after the last block (GPT-2, T5) trains with the last block;
- a position table that every block reads (T5's relative attention bias, DeBERTa-v2's relative
  embeddings and their LayerNorm, MPNet's relative attention bias) trains only when every block
  trains, because training it changes what the frozen blocks compute;
- ALBERT's shared block, which runs at every depth, trains when any depth is unfrozen, because
  ``last_n:K`` would otherwise train nothing for K below the depth;
- the pooler trains only with ``pooling="pooler"``, the only pooling that passes the pooler's
  output on to the loss.
"""

import dataclasses
import re
from typing import Optional

import tf_keras

from tfpeft.errors import ConfigError, closest_match
from tfpeft.freezing import restore_trainable, set_inference_mode, set_trainable_variables
from tfpeft.lora import LoraConfig, adapter_variables, apply_adapters, parse_lora_fields

POLICY_KINDS = ("head", "last_n", "full", "bitfit", "layernorm", "embeddings_frozen", "pattern", "lora")
POLICY_SYNTAX = (
    "head, last_n:K, full, bitfit, layernorm, embeddings_frozen, "
    "pattern:include=REGEX,exclude=REGEX (either part may be left out), or "
    "lora:r=8,alpha=16,dropout=0.1,target_modules=REGEX,combine=POLICY (every part optional)"
)
PATTERN_KEYS = ("include", "exclude")

# Kept under its former name for callers of the first release.
_set_inference_mode = set_inference_mode


@dataclasses.dataclass(frozen=True)
class Policy:
    """A named rule that selects the backbone variables that train. The head always trains.

    Kinds:

    - ``head``: the whole backbone is frozen.
    - ``last_n``: the last ``num_blocks`` blocks train (``last_n:0`` is ``head``).
    - ``full``: everything trains.
    - ``bitfit``: the bias terms of the backbone train, LayerNorm biases included.
    - ``layernorm``: the LayerNorm scales and biases of the backbone train.
    - ``embeddings_frozen``: everything but the embeddings trains.
    - ``lora``: LoRA adapters (``tfpeft.lora``) on the dense layers that ``lora`` targets train,
      plus the variables of the policy ``lora.combine`` if set; the backbone's own weights stay
      frozen.
    - ``pattern``: the variables whose stable name (``Backbone.named_variables``) matches the
      regular expression ``include`` and does not match ``exclude`` train. Matching uses
      ``re.search``, so a pattern matches anywhere in the name unless anchored.

    Args:
        kind: str. One of ``POLICY_KINDS``.
        num_blocks: int or None. The K of ``last_n:K``; None for the other kinds.
        include: str or None. For ``pattern``: the names to train; None means every name.
        exclude: str or None. For ``pattern``: names to leave frozen even if ``include`` matches.
        lora: ``LoraConfig`` or None. For ``lora``: the adapters' settings.

    Example:

    >>> tfpeft.parse_policy("last_n:2")
    Policy(kind='last_n', num_blocks=2, include=None, exclude=None)
    >>> tfpeft.parse_policy("pattern:include=attention/self/(query|value)/kernel").include
    'attention/self/(query|value)/kernel'
    """

    kind: str
    num_blocks: Optional[int] = None
    include: Optional[str] = None
    exclude: Optional[str] = None
    lora: Optional[LoraConfig] = None

    def __post_init__(self):
        if self.kind not in POLICY_KINDS:
            suggestion = closest_match(str(self.kind).lower(), POLICY_KINDS)
            hint = f" Did you mean {suggestion!r}?" if suggestion else ""
            raise ConfigError(f"Unknown policy kind {self.kind!r}. Use one of: {POLICY_SYNTAX}.{hint}")
        if self.kind == "last_n":
            if not isinstance(self.num_blocks, int) or isinstance(self.num_blocks, bool) or self.num_blocks < 0:
                raise ConfigError(
                    f"policy last_n needs a block count K >= 0, as in 'last_n:2'; got "
                    f"last_n:{self.num_blocks!r}."
                )
        elif self.num_blocks is not None:
            raise ConfigError(f"policy {self.kind!r} takes no block count; got {self.num_blocks}.")
        if self.kind == "lora" and self.lora is None:
            object.__setattr__(self, "lora", LoraConfig())
        elif self.kind != "lora" and self.lora is not None:
            raise ConfigError(f"policy {self.kind!r} takes no LoRA settings; use 'lora:...'.")
        if self.kind == "pattern":
            self._check_patterns()
        elif self.include is not None or self.exclude is not None:
            raise ConfigError(f"policy {self.kind!r} takes no include or exclude pattern; use 'pattern:...'.")

    def _check_patterns(self):
        if self.include is None and self.exclude is None:
            raise ConfigError(
                "policy pattern needs include=REGEX, exclude=REGEX or both, as in "
                "'pattern:include=attention,exclude=layer_._0/'."
            )
        for key in PATTERN_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise ConfigError(f"policy pattern: {key} must be a non-empty regular expression; got {value!r}.")
            try:
                re.compile(value)
            except re.error as error:
                raise ConfigError(
                    f"policy pattern: {key}={value!r} is not a valid regular expression ({error})."
                ) from error

    @property
    def name(self):
        """The policy as written on the command line, e.g. ``last_n:2``; ``parse_policy`` reads it back."""
        if self.kind == "last_n":
            return f"last_n:{self.num_blocks}"
        if self.kind == "pattern":
            fields = [f"{key}={getattr(self, key)}" for key in PATTERN_KEYS if getattr(self, key) is not None]
            return "pattern:" + ",".join(fields)
        if self.kind == "lora":
            return self.lora.name
        return self.kind

    def __str__(self):
        return self.name

    def select_variables(self, backbone, pooling="mean"):
        """Return the backbone variables this policy trains on ``backbone``, in part order.

        Raises ``ConfigError`` when ``last_n:K`` requests more blocks than the backbone has.
        Also raises it when ``bitfit``, ``layernorm`` or ``pattern`` selects no variable at
        all, because that policy would then silently equal ``head``. ``lora`` adds its adapters
        to the backbone first, where they are missing.
        """
        if self.kind == "lora":
            selected = apply_adapters(backbone, self.lora)
            if self.lora.combine is not None:
                ids = {id(variable) for variable in selected}
                combined = parse_policy(self.lora.combine).select_variables(backbone, pooling)
                selected = selected + [variable for variable in combined if id(variable) not in ids]
            return selected
        self._check_block_count(backbone)
        owners = _owner_layers(backbone.main_layer)
        names = dict((id(variable), name) for name, variable in backbone.named_variables())
        selected = []
        for part in _parts_with_other(backbone):
            if part.role == "pooler" and pooling != "pooler":
                continue
            part_trains = self._part_trains(part, backbone.num_blocks)
            for variable in part.variables:
                if not variable.trainable:
                    continue
                if self._selects(part_trains, variable, owners.get(id(variable)), names.get(id(variable), "")):
                    selected.append(variable)
        if not selected and self.kind in ("bitfit", "layernorm", "pattern"):
            raise ConfigError(self._empty_selection_message(backbone, pooling, names))
        return selected

    def trainable_part_names(self, backbone, pooling):
        """Return the names of the backbone parts in which this policy trains some variable."""
        selected = {id(variable) for variable in self.select_variables(backbone, pooling)}
        return {
            part.name
            for part in _parts_with_other(backbone)
            if any(id(variable) in selected for variable in part.variables)
        }

    def _check_block_count(self, backbone):
        num_blocks = backbone.num_blocks
        if self.kind == "last_n" and self.num_blocks > num_blocks:
            raise ConfigError(
                f"policy last_n:{self.num_blocks} asks for more blocks than the backbone has: "
                f"use K in 0..{num_blocks} for this {num_blocks}-block "
                f"{backbone.config.model_type} backbone (last_n:{num_blocks} trains every block)."
            )

    def _part_trains(self, part, num_blocks):
        """Return whether a part-level policy trains ``part``; None for variable-level kinds."""
        if self.kind in ("bitfit", "layernorm", "pattern"):
            return None
        if self.kind == "head":
            return False
        if self.kind == "full":
            return True
        if self.kind == "embeddings_frozen":
            return part.role != "embeddings"
        first_trained = num_blocks - self.num_blocks
        rules = {
            "embeddings": False,
            "block": any(depth >= first_trained for depth in part.depths),
            "shared_block": any(depth >= first_trained for depth in part.depths),
            "shared_table": self.num_blocks == num_blocks,
            "final_norm": self.num_blocks >= 1,
            "pooler": self.num_blocks >= 1,
            "other": False,
        }
        return rules[part.role]

    def _selects(self, part_trains, variable, owner, name):
        if part_trains is not None:
            return part_trains
        if self.kind == "bitfit":
            return is_bias(variable, owner)
        if self.kind == "layernorm":
            return is_layer_norm(owner)
        if self.include is not None and not re.search(self.include, name):
            return False
        return self.exclude is None or not re.search(self.exclude, name)

    def _empty_selection_message(self, backbone, pooling, names):
        model_type = backbone.config.model_type
        if self.kind == "bitfit":
            return (
                f"policy bitfit selects no variable of this {model_type} backbone: it has no bias "
                "terms (no Dense, convolution or LayerNorm biases), so bitfit would train the "
                "head alone. Use layernorm, last_n:K or pattern:include=REGEX instead."
            )
        if self.kind == "layernorm":
            return (
                f"policy layernorm selects no variable of this {model_type} backbone: it has no "
                "LayerNorm layers. Use bitfit, last_n:K or pattern:include=REGEX instead."
            )
        examples = ", ".join(repr(name) for name in list(names.values())[:3])
        pooler = next((part for part in backbone.parts() if part.role == "pooler"), None)
        pooler_note = ""
        if pooling != "pooler" and pooler is not None:
            if any(self._selects(None, v, None, names.get(id(v), "")) for v in pooler.variables):
                pooler_note = (
                    " outside the pooler, whose variables train only with pooling='pooler' "
                    f"(this run uses {pooling!r})"
                )
        return (
            f"policy {self.name!r} selects no variable of this {model_type} backbone"
            f"{pooler_note}. Names look like {examples}; `tfpeft inspect --model MODEL "
            "--policy head --weights` lists them all."
        )


def parse_policy(policy):
    """Return a ``Policy`` from a name such as ``head``, ``last_n:2`` or ``pattern:include=query``."""
    if isinstance(policy, Policy):
        return policy
    text = str(policy).strip()
    kind, _, argument = text.partition(":")
    if kind == "last_n":
        try:
            num_blocks = int(argument)
        except ValueError:
            raise ConfigError(
                f"Invalid policy {text!r}: last_n needs an integer block count, as in 'last_n:2'."
            ) from None
        return Policy("last_n", num_blocks)
    if kind == "pattern":
        return Policy("pattern", **_parse_pattern_fields(text, argument))
    if kind == "lora":
        return Policy("lora", lora=parse_lora_fields(text, argument))
    if argument and kind in POLICY_KINDS:
        raise ConfigError(f"Invalid policy {text!r}: {kind!r} takes no argument after ':'.")
    # An unknown kind (kinds are lower case) fails in Policy with the list of kinds.
    return Policy(kind)


def _parse_pattern_fields(text, argument):
    # Split only where a comma starts the next key, so commas inside a regex ({1,3}) stay.
    fields = {}
    for piece in re.split(r",(?=(?:include|exclude)=)", argument) if argument else []:
        key, separator, value = piece.partition("=")
        if not separator or key not in PATTERN_KEYS:
            raise ConfigError(
                f"Invalid policy {text!r}: expected include=REGEX or exclude=REGEX after "
                f"'pattern:', got {piece!r}."
            )
        if key in fields:
            raise ConfigError(f"Invalid policy {text!r}: {key}= is given twice.")
        fields[key] = value
    return fields


def is_bias(variable, owner):
    """Return whether ``variable`` is an additive bias term: a ``bias`` vector or a LayerNorm beta."""
    short_name = variable.name.split(":")[0].split("/")[-1]
    if short_name == "bias" or short_name.endswith("_bias"):
        return True
    return short_name == "beta" and is_layer_norm(owner)


def is_layer_norm(layer):
    """Return whether ``layer`` is a layer norm: Keras' or a family's own (``TFT5LayerNorm``)."""
    if layer is None:
        return False
    return isinstance(layer, tf_keras.layers.LayerNormalization) or type(layer).__name__.endswith("LayerNorm")


def _owner_layers(root):
    """Map ``id(variable)`` to the layer that created it, for every variable under ``root``."""
    owners = {}
    for layer in root._flatten_layers(include_self=True, recursive=True):
        for variable in layer._trainable_weights + layer._non_trainable_weights:
            owners.setdefault(id(variable), layer)
    return owners


def _parts_with_other(backbone):
    """Return the backbone's parts plus an ``other`` part for variables no registry path reaches."""
    from tfpeft.backbones import BackbonePart

    parts = backbone.parts()
    claimed = {id(variable) for part in parts for variable in part.variables}
    other = tuple(v for v in backbone.main_layer.weights if id(v) not in claimed)
    if other:
        parts.append(BackbonePart("other", "other", (), other, ()))
    return parts


def apply_policy(backbone, policy, *, pooling="mean", frozen_dropout=False):
    """Make exactly the variables that ``policy`` selects trainable, and set inference mode.

    Compile the model again after calling this: Keras reads the trainable variables at compile
    time. Calling it again with another policy undoes the earlier one first.

    Args:
        backbone: a ``Backbone``.
        policy: a ``Policy`` or a policy name such as ``last_n:2``.
        pooling: str. The classifier's pooling; the pooler trains only for ``pooler``.
        frozen_dropout: bool. Keep dropout on in frozen parts while training.

    Returns:
        The ``Policy`` applied.
    """
    policy = parse_policy(policy)
    # Adapters join the layers' lists of variables, so an earlier policy's moves come out first.
    restore_trainable(backbone.main_layer)
    selected = policy.select_variables(backbone, pooling)
    set_trainable_variables(backbone.main_layer, selected)

    selected_ids = {id(variable) for variable in selected}
    for part in backbone.parts():
        frozen = not any(id(variable) in selected_ids for variable in part.variables)
        for layer in part.layers:
            set_inference_mode(layer, enabled=frozen and not frozen_dropout)
    # Layers of the main layer outside every part, if any, follow it: they run in inference
    # mode when the whole backbone is frozen.
    set_inference_mode(backbone.main_layer, enabled=not selected and not frozen_dropout)
    return policy


@dataclasses.dataclass
class PartCount:
    """Parameter counts of one part: the embeddings, a block, a shared table, the pooler or the head.

    ``lora`` counts the part's LoRA adapter parameters, which ``total`` includes.
    """

    name: str
    trainable: int
    total: int
    lora: int = 0


@dataclasses.dataclass
class WeightCount:
    """One variable of the classifier: stable name, part, shape and whether the optimizer updates it."""

    name: str
    part: str
    shape: tuple
    trainable: bool

    @property
    def num_params(self):
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclasses.dataclass
class ParameterReport:
    """Trainable and total parameter counts of a classifier, overall, per part and per variable."""

    parts: list
    weights: list = dataclasses.field(default_factory=list)

    @property
    def trainable_params(self):
        return sum(part.trainable for part in self.parts)

    @property
    def total_params(self):
        return sum(part.total for part in self.parts)

    @property
    def lora_params(self):
        return sum(part.lora for part in self.parts)

    @property
    def trainable_percent(self):
        return 100.0 * self.trainable_params / max(self.total_params, 1)

    def to_dict(self, weights=False):
        """Return the counts as a dict; ``weights=True`` adds one entry per variable."""
        data = {
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_percent": round(self.trainable_percent, 4),
            "lora_params": self.lora_params,
            "parts": [dataclasses.asdict(part) for part in self.parts],
        }
        if weights:
            data["weights"] = [
                {**dataclasses.asdict(weight), "shape": list(weight.shape), "num_params": weight.num_params}
                for weight in self.weights
            ]
        return data

    def format(self):
        """Return the report as a text table with a total row, and a LoRA column when adapters exist."""
        rows = [(part.name, part.trainable, part.total, part.lora) for part in self.parts]
        rows.append(("total", self.trainable_params, self.total_params, self.lora_params))
        show_lora = self.lora_params > 0
        width = max(len(row[0]) for row in rows)
        lora_header = f"  {'lora':>10}" if show_lora else ""
        lines = [f"{'part':<{width}}  {'trainable':>12}  {'total':>12}  {'percent':>7}{lora_header}"]
        for name, trainable, total, lora in rows:
            percent = 100.0 * trainable / max(total, 1)
            lora_cell = f"  {lora:>10,}" if show_lora else ""
            lines.append(f"{name:<{width}}  {trainable:>12,}  {total:>12,}  {percent:>6.2f}%{lora_cell}")
        return "\n".join(lines)

    def format_weights(self):
        """Return one line per variable: stable name, part, shape, parameters, trainable or frozen."""
        width = max([len(weight.name) for weight in self.weights] + [4])
        part_width = max([len(weight.part) for weight in self.weights] + [4])
        lines = [f"{'name':<{width}}  {'part':<{part_width}}  {'shape':<14}  {'params':>10}  state"]
        for weight in self.weights:
            shape = "x".join(str(dim) for dim in weight.shape) or "scalar"
            state = "trainable" if weight.trainable else "frozen"
            lines.append(
                f"{weight.name:<{width}}  {weight.part:<{part_width}}  {shape:<14}  {weight.num_params:>10,}  {state}"
            )
        return "\n".join(lines)


def _num_elements(variables):
    return sum(int(variable.shape.num_elements()) for variable in variables)


def parameter_report(model, backbone):
    """Count the parameters of ``model`` per part, trainable meaning updated by the optimizer.

    Every variable of the model is counted once: in its backbone part, in ``other`` when no
    registry path reaches it, or in ``head`` when it lies outside the backbone (pooling,
    dropout and the dense head). Shared position tables and the final layer norm have rows of
    their own. LoRA adapters count in the part of the layer they adapt, and again in its
    ``lora`` column.
    """
    trainable_ids = {id(variable) for variable in model.trainable_variables}
    names = dict((id(variable), name) for name, variable in backbone.named_variables())
    lora_ids = {id(variable) for variable in adapter_variables(backbone)}
    counts = []
    weights = []
    for part in _parts_with_other(backbone):
        trainable = [v for v in part.variables if id(v) in trainable_ids]
        lora = [v for v in part.variables if id(v) in lora_ids]
        counts.append(
            PartCount(part.name, _num_elements(trainable), _num_elements(part.variables), _num_elements(lora))
        )
        for variable in part.variables:
            weights.append(_weight_count(names.get(id(variable), variable.name), part.name, variable, trainable_ids))

    backbone_ids = {id(v) for v in backbone.main_layer.weights}
    head = [v for v in model.weights if id(v) not in backbone_ids]
    trainable = [v for v in head if id(v) in trainable_ids]
    counts.append(PartCount("head", _num_elements(trainable), _num_elements(head)))
    for variable in head:
        weights.append(_weight_count(variable.name.split(":")[0], "head", variable, trainable_ids))
    return ParameterReport(counts, weights)


def _weight_count(name, part, variable, trainable_ids):
    return WeightCount(name, part, tuple(int(dim) for dim in variable.shape), id(variable) in trainable_ids)
