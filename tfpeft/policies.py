"""Freezing policies: which parts of a backbone train, and the trainable-parameter report.

A policy is applied per part (the embeddings, each block, the pooler) through Keras'
``trainable`` flag on that part's layer. The main layer itself stays trainable, because a frozen
parent hides children that are set trainable again. Frozen parts run in inference mode, so
their dropout is off even while the head trains, which is the Keras transfer-learning
convention. ``frozen_dropout=True`` keeps dropout on in frozen parts, as PyTorch does when a
frozen module stays in train mode.
"""

import dataclasses
import functools
from typing import Optional

from tfpeft.errors import ConfigError

POLICY_KINDS = ("head", "last_n", "full")


@dataclasses.dataclass(frozen=True)
class Policy:
    """A named rule that selects the backbone parts that train. The head always trains.

    Args:
        kind: str. ``head`` freezes the whole backbone, ``last_n`` trains the last
            ``num_blocks`` blocks, ``full`` trains everything.
        num_blocks: int or None. The K of ``last_n:K``; None for the other kinds.

    Example:

    >>> tfpeft.parse_policy("last_n:2")
    Policy(kind='last_n', num_blocks=2)
    """

    kind: str
    num_blocks: Optional[int] = None

    def __post_init__(self):
        if self.kind not in POLICY_KINDS:
            raise ConfigError(
                f"Unknown policy kind {self.kind!r}. Use one of: head, last_n:K, full."
            )
        if self.kind == "last_n":
            if not isinstance(self.num_blocks, int) or self.num_blocks < 0:
                raise ConfigError(
                    f"policy last_n needs a block count K >= 0, as in 'last_n:2'; got "
                    f"last_n:{self.num_blocks!r}."
                )
        elif self.num_blocks is not None:
            raise ConfigError(f"policy {self.kind!r} takes no block count; got {self.num_blocks}.")

    @property
    def name(self):
        """The policy as written on the command line, e.g. ``last_n:2``."""
        return f"last_n:{self.num_blocks}" if self.kind == "last_n" else self.kind

    def __str__(self):
        return self.name

    def trainable_part_names(self, backbone, pooling):
        """Return the names of the backbone parts this policy trains on ``backbone``."""
        num_blocks = backbone.num_blocks
        if self.kind == "last_n" and self.num_blocks > num_blocks:
            raise ConfigError(
                f"policy last_n:{self.num_blocks} asks for more blocks than the backbone has: "
                f"use K in 0..{num_blocks} for this {num_blocks}-block "
                f"{backbone.config.model_type} backbone (last_n:{num_blocks} trains every block)."
            )

        names = set()
        if self.kind == "full":
            names.add("embeddings")
            names.update(f"block_{i}" for i in range(num_blocks))
        elif self.kind == "last_n":
            names.update(f"block_{i}" for i in range(num_blocks - self.num_blocks, num_blocks))
        # The pooler's output only reaches the loss through `pooler` pooling, and the `head`
        # policy freezes the whole backbone by definition.
        if backbone.pooler is not None and pooling == "pooler" and self.kind != "head":
            names.add("pooler")
        return names


def parse_policy(policy):
    """Return a ``Policy`` from a name such as ``head``, ``last_n:2`` or ``full``."""
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
    if argument:
        raise ConfigError(f"Invalid policy {text!r}: {kind!r} takes no argument after ':'.")
    return Policy(kind)


def _set_inference_mode(layer, enabled):
    """Make ``layer`` ignore ``training=True`` from its caller, or undo that."""
    original = getattr(layer, "_tfpeft_original_call", None)
    # A layer without a `training` argument (a pooler) behaves the same in both modes.
    if enabled and original is None and layer._call_spec.expects_training_arg:
        original = layer.call

        @functools.wraps(original)
        def call_in_inference_mode(*args, **kwargs):
            kwargs["training"] = False
            return original(*args, **kwargs)

        layer._tfpeft_original_call = original
        layer.call = call_in_inference_mode
    elif not enabled and original is not None:
        layer.call = original
        del layer._tfpeft_original_call


def apply_policy(backbone, policy, *, pooling="mean", frozen_dropout=False):
    """Set the ``trainable`` flag of every backbone part according to ``policy``.

    Compile the model again after calling this: Keras reads the flags at compile time.

    Args:
        backbone: a ``Backbone``.
        policy: a ``Policy`` or a policy name such as ``last_n:2``.
        pooling: str. The classifier's pooling; the pooler trains only for ``pooler``.
        frozen_dropout: bool. Keep dropout on in frozen parts while training.

    Returns:
        The ``Policy`` applied.
    """
    policy = parse_policy(policy)
    trainable_names = policy.trainable_part_names(backbone, pooling)

    backbone.main_layer.trainable = True
    for name, layer in backbone.parts():
        layer.trainable = name in trainable_names
        _set_inference_mode(layer, enabled=not layer.trainable and not frozen_dropout)
    return policy


@dataclasses.dataclass
class PartCount:
    """Parameter counts of one part: the embeddings, a block, the pooler or the head."""

    name: str
    trainable: int
    total: int


@dataclasses.dataclass
class ParameterReport:
    """Trainable and total parameter counts of a classifier, overall and per part."""

    parts: list

    @property
    def trainable_params(self):
        return sum(part.trainable for part in self.parts)

    @property
    def total_params(self):
        return sum(part.total for part in self.parts)

    @property
    def trainable_percent(self):
        return 100.0 * self.trainable_params / max(self.total_params, 1)

    def to_dict(self):
        return {
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_percent": round(self.trainable_percent, 4),
            "parts": [dataclasses.asdict(part) for part in self.parts],
        }

    def format(self):
        """Return the report as a text table with a total row."""
        rows = [(part.name, part.trainable, part.total) for part in self.parts]
        rows.append(("total", self.trainable_params, self.total_params))
        width = max(len(name) for name, _, _ in rows)
        lines = [f"{'part':<{width}}  {'trainable':>12}  {'total':>12}  {'percent':>7}"]
        for name, trainable, total in rows:
            percent = 100.0 * trainable / max(total, 1)
            lines.append(f"{name:<{width}}  {trainable:>12,}  {total:>12,}  {percent:>6.2f}%")
        return "\n".join(lines)


def _num_elements(variables):
    return sum(int(variable.shape.num_elements()) for variable in variables)


def parameter_report(model, backbone):
    """Count the parameters of ``model`` per part, trainable meaning updated by the optimizer.

    Every variable of the model is counted once: in its backbone part, or in ``head`` when it
    lies outside the backbone (pooling, dropout and the dense head).
    """
    trainable_ids = {id(variable) for variable in model.trainable_variables}
    seen = set()
    parts = []
    for name, layer in backbone.parts():
        variables = [v for v in layer.weights if id(v) not in seen]
        seen.update(id(v) for v in variables)
        trainable = [v for v in variables if id(v) in trainable_ids]
        parts.append(PartCount(name, _num_elements(trainable), _num_elements(variables)))

    backbone_ids = {id(v) for v in backbone.main_layer.weights}
    other = [v for v in backbone.main_layer.weights if id(v) not in seen]
    if other:
        trainable = [v for v in other if id(v) in trainable_ids]
        parts.append(PartCount("other", _num_elements(trainable), _num_elements(other)))

    head = [v for v in model.weights if id(v) not in backbone_ids]
    trainable = [v for v in head if id(v) in trainable_ids]
    parts.append(PartCount("head", _num_elements(trainable), _num_elements(head)))
    return ParameterReport(parts)
