"""The search space of a tuning run: which training settings vary, and over which values.

A parameter is written ``NAME=SPEC`` on the command line and ``NAME = "SPEC"`` (or a list of
values) in the ``[search]`` table of a TOML file:

- ``log:1e-5:1e-3``: a float drawn on a log scale between the bounds;
- ``float:0:0.1`` or ``float:0:0.1:0.05``: a float on a linear scale, with an optional step;
- ``int:0:6`` or ``int:0:6:2``: an integer range, bounds included;
- ``choice:1,2,3`` (or a TOML list): one of the listed values.

Names are the ``TrainingConfig`` fields in ``SEARCHABLE`` (``learning_rate``,
``num_train_epochs``, ``weight_decay``, ...) plus ``unfreeze_depth``, the K of the ``last_n:K``
policy, and ``lora_r``, the rank of the ``lora`` policy (the run's other LoRA settings stay).
"""

import dataclasses
from typing import Optional

from tfpeft.errors import ConfigError, closest_match

# Settings a trial may change. Others choose the data, the backbone, the output or the
# machine setup, which one search shares: the data is tokenized once, for example.
SEARCHABLE = {
    "learning_rate",
    "num_train_epochs",
    "per_device_train_batch_size",
    "lr_scheduler_type",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "classifier_dropout",
    "seed",
}
UNFREEZE_DEPTH = "unfreeze_depth"
LORA_R = "lora_r"
# Searchable names that set the policy rather than a TrainingConfig field.
POLICY_PARAMETERS = (UNFREEZE_DEPTH, LORA_R)
# The smallest value of each policy parameter: last_n:0 is head, and a LoRA rank is at least 1.
MINIMUM_VALUES = {UNFREEZE_DEPTH: 0, LORA_R: 1}
# The policy kinds each policy parameter works on: unfreeze_depth replaces a head or last_n
# policy with last_n:K, and lora_r changes the rank of a lora policy.
POLICY_KINDS = {UNFREEZE_DEPTH: ("head", "last_n"), LORA_R: ("lora",)}
KINDS = ("log", "float", "int", "choice")


def searchable_names():
    """Return the names a search space may use."""
    return sorted(SEARCHABLE | set(POLICY_PARAMETERS))


def _value_type(name):
    """Return the Python type of a searchable setting's values."""
    from tfpeft.config import TrainingConfig, field_type

    if name in POLICY_PARAMETERS:
        return int
    field = {field.name: field for field in dataclasses.fields(TrainingConfig)}[name]
    return field_type(field)


@dataclasses.dataclass(frozen=True)
class SearchParameter:
    """One searched setting and its range or choices.

    Args:
        name: str. A ``TrainingConfig`` field or ``unfreeze_depth``.
        kind: str. ``log``, ``float``, ``int`` or ``choice``.
        min_value, max_value: number or None. Bounds of a range, both included.
        step: number or None. The step of a range; grid search needs one on float ranges.
        values: tuple. The values of a ``choice``.
    """

    name: str
    kind: str
    min_value: Optional[float] = None
    max_value: Optional[float] = None
    step: Optional[float] = None
    values: tuple = ()

    def __post_init__(self):
        names = searchable_names()
        if self.name not in names:
            suggestion = closest_match(self.name, names)
            hint = f" Did you mean {suggestion!r}?" if suggestion else ""
            raise ConfigError(
                f"Cannot search {self.name!r}.{hint} Searchable settings: {', '.join(names)}."
            )
        if self.kind not in KINDS:
            raise ConfigError(f"Invalid search kind {self.kind!r} for {self.name}; use one of {', '.join(KINDS)}.")
        if self.kind == "choice":
            if not self.values:
                raise ConfigError(f"The search choice for {self.name} lists no values.")
            self._check_minimum(min(self.values))
            return
        if self.min_value is None or self.max_value is None or self.min_value > self.max_value:
            raise ConfigError(
                f"Invalid search range for {self.name}: min={self.min_value}, max={self.max_value}; "
                "min must be at most max."
            )
        if self.kind == "log" and self.min_value <= 0:
            raise ConfigError(f"A log range for {self.name} needs min > 0; got {self.min_value}.")
        if self.kind == "int" and _value_type(self.name) is not int:
            raise ConfigError(f"{self.name} is not an integer setting; use float:, log: or choice:.")
        self._check_minimum(self.min_value)

    def _check_minimum(self, lowest):
        minimum = MINIMUM_VALUES.get(self.name)
        if minimum is not None and lowest < minimum:
            raise ConfigError(
                f"Invalid search spec {self.name}={self.spec()}: {self.name} must be at least "
                f"{minimum}, got {lowest}."
            )

    def largest_value(self):
        """Return the largest value the parameter can take."""
        return max(self.values) if self.kind == "choice" else self.max_value

    @classmethod
    def parse(cls, name, spec):
        """Build a parameter from a spec string such as ``log:1e-5:1e-3``, or a list of values."""
        if isinstance(spec, (list, tuple)):
            return cls(name, "choice", values=tuple(_convert(name, value) for value in spec))
        kind, _, rest = str(spec).partition(":")
        if kind == "choice":
            return cls(name, "choice", values=tuple(_convert(name, value) for value in rest.split(",") if value))
        if kind not in KINDS:
            raise ConfigError(
                f"Invalid search spec {name}={spec!r}: start with log:, float:, int: or choice:, "
                "as in learning_rate=log:1e-5:1e-3."
            )
        parts = rest.split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"Invalid search spec {name}={spec!r}: write {kind}:MIN:MAX or {kind}:MIN:MAX:STEP.")
        number = int if kind == "int" else float
        try:
            numbers = [number(part) for part in parts]
        except ValueError:
            raise ConfigError(f"Invalid search spec {name}={spec!r}: bounds must be {number.__name__} numbers.") from None
        step = numbers[2] if len(numbers) == 3 else None
        return cls(name, kind, numbers[0], numbers[1], step)

    def spec(self):
        """Return the spec string that ``parse`` reads back."""
        if self.kind == "choice":
            return "choice:" + ",".join(str(value) for value in self.values)
        text = f"{self.kind}:{self.min_value}:{self.max_value}"
        return text if self.step is None else f"{text}:{self.step}"

    def declare(self, hyperparameters):
        """Declare this parameter on a ``keras_tuner.HyperParameters`` object."""
        if self.kind == "choice":
            hyperparameters.Choice(self.name, list(self.values), ordered=False)
        elif self.kind == "int":
            hyperparameters.Int(self.name, int(self.min_value), int(self.max_value), step=int(self.step or 1))
        else:
            sampling = "log" if self.kind == "log" else "linear"
            hyperparameters.Float(self.name, self.min_value, self.max_value, step=self.step, sampling=sampling)


def _convert(name, value):
    value_type = _value_type(name)
    if isinstance(value, value_type) and not isinstance(value, bool):
        return value
    try:
        if value_type is bool:
            return str(value).lower() in ("1", "true", "yes")
        return value_type(value)
    except ValueError:
        raise ConfigError(f"Invalid search value {value!r} for {name}: expected {value_type.__name__}.") from None


def parse_space(specs):
    """Return a list of ``SearchParameter`` from ``{name: spec}`` or ``["name=spec", ...]``."""
    if isinstance(specs, dict):
        items = list(specs.items())
    else:
        items = []
        for text in specs:
            name, separator, spec = str(text).partition("=")
            if not separator:
                raise ConfigError(f"Invalid --search {text!r}: write NAME=SPEC, e.g. learning_rate=log:1e-5:1e-3.")
            items.append((name.strip(), spec.strip()))
    space = [SearchParameter.parse(name, spec) for name, spec in items]
    names = [parameter.name for parameter in space]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"The search space names {', '.join(duplicates)} more than once.")
    return space


def default_space(num_blocks, policy_kind="last_n"):
    """Return the default space for a base policy of ``policy_kind``.

    The learning rate on a log scale, plus every unfreeze depth for ``head`` and ``last_n``
    or ranks 4, 8 and 16 for ``lora``. Other policies keep their policy in every trial.
    """
    space = [SearchParameter("learning_rate", "log", 1e-5, 1e-3)]
    if policy_kind in POLICY_KINDS[UNFREEZE_DEPTH]:
        space.append(SearchParameter(UNFREEZE_DEPTH, "int", 0, num_blocks))
    elif policy_kind in POLICY_KINDS[LORA_R]:
        space.append(SearchParameter(LORA_R, "choice", values=(4, 8, 16)))
    return space


def check_space_policy(space, policy, num_blocks):
    """Raise ``ConfigError`` where a policy parameter of ``space`` does not fit the base ``policy``.

    Args:
        space: list of ``SearchParameter``.
        policy: ``Policy``. The base run's policy, which a policy parameter replaces or changes.
        num_blocks: int. Blocks of the backbone, the largest unfreeze depth.
    """
    for parameter in space:
        kinds = POLICY_KINDS.get(parameter.name)
        if kinds is None:
            continue
        if policy.kind not in kinds:
            fix = (
                "search lora_r for a lora policy, or pass --policy head or last_n:K"
                if parameter.name == UNFREEZE_DEPTH
                else "pass --policy lora (with its alpha and target_modules), or search unfreeze_depth"
            )
            raise ConfigError(
                f"--search {parameter.name}={parameter.spec()} needs a policy of kind "
                f"{' or '.join(kinds)}, but --policy is {policy.name!r}: {fix}."
            )
        if parameter.name == UNFREEZE_DEPTH and parameter.largest_value() > num_blocks:
            raise ConfigError(
                f"--search unfreeze_depth={parameter.spec()} goes up to {parameter.largest_value()}, "
                f"but this {num_blocks}-block backbone allows 0..{num_blocks}."
            )
