"""``TrainingConfig``: every setting of a run, with Hugging Face ``TrainingArguments`` names.

A config is read from a TOML file, then overridden by command-line flags or keyword arguments,
and validated when built. The run folder keeps the full config as ``config.toml``, which
``tfpeft train --config`` accepts again.
"""

import dataclasses
import functools
import logging
import tomllib
import typing
import warnings
from typing import Optional

from tfpeft.data.files import ENCODING_ERRORS
from tfpeft.data.labels import CLASS_WEIGHTS
from tfpeft.data.sources import EMPTY_TEXT_ACTIONS
from tfpeft.data.tfds_source import TFDS_PREFIX
from tfpeft.data.truncation import TRUNCATIONS
from tfpeft.errors import ConfigError, TfpeftWarning, closest_match

logger = logging.getLogger("tfpeft.config")

SCHEDULER_TYPES = ("linear", "cosine", "constant")
EVAL_STRATEGIES = ("epoch", "no")
SAVE_STRATEGIES = ("epoch", "no")
METRICS = ("macro_f1", "accuracy", "macro_precision", "macro_recall", "loss")
# tf_keras.utils.set_random_seed also seeds NumPy, which takes seeds from 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")

# Older names that tutorials still use, mapped to the current field.
DEPRECATED_NAMES = {"evaluation_strategy": "eval_strategy"}


def _field(default, help, **kwargs):
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


@dataclasses.dataclass
class TrainingConfig:
    """Settings of one fine-tuning run.

    Field names follow Hugging Face ``TrainingArguments`` where one exists there. Each field's
    ``help`` metadata is the text of its command-line flag.

    Example:

    >>> config = TrainingConfig(output_dir="runs/bbc", dataset="bbc_news", num_train_epochs=2)
    >>> config.policy
    'last_n:2'
    """

    # Model.
    model_name_or_path: str = _field(
        "minilm", "Backbone: a folder written by save_pretrained, a Hub name, or 'minilm'."
    )
    policy: str = _field(
        "last_n:2",
        "Freezing policy: head, last_n:K, full, bitfit, layernorm, embeddings_frozen, "
        "pattern:include=REGEX,exclude=REGEX or lora:r=8,alpha=16,target_modules=query|value.",
    )
    pooling: str = _field("mean", "Pooling of the hidden states: mean, cls, last (GPT-2) or pooler.")
    classifier_dropout: float = _field(0.1, "Dropout rate before the classification head.")
    frozen_dropout: bool = _field(
        False, "Keep dropout on in frozen backbone parts while training."
    )

    # Data.
    dataset: Optional[str] = _field(
        None, "Built-in dataset (bbc_news, tweets) or a TFDS dataset as tfds:NAME, e.g. tfds:glue/sst2."
    )
    train_file: Optional[str] = _field(None, "Training data: a CSV, TSV, JSON Lines or Parquet file.")
    validation_file: Optional[str] = _field(None, "Validation data; default: split from training data.")
    test_file: Optional[str] = _field(None, "Test data; default: split from training data.")
    text_column: str = _field("text", "Column (or JSON key, or TFDS feature) that holds the text.")
    text_pair_column: Optional[str] = _field(
        None, "Column of the second text of sentence pairs (paraphrase, entailment); unset for single texts."
    )
    label_column: str = _field("label", "Column (or JSON key, or TFDS feature) that holds the label.")
    encoding: str = _field("utf-8", "Text encoding of CSV, TSV and JSON files, e.g. utf-8 or latin-1.")
    encoding_errors: str = _field(
        "strict", "Undecodable bytes in data files: strict (fail) or replace (with U+FFFD, count logged)."
    )
    on_empty_text: str = _field("drop", "Empty or whitespace-only texts: drop (count logged) or error.")
    tfds_data_dir: Optional[str] = _field(
        None, "TFDS data folder for tfds: datasets; default: TFDS's own (~/tensorflow_datasets)."
    )
    tfds_train_split: str = _field("train", "TFDS split for training; slices work, e.g. 'train[:90%]'.")
    tfds_validation_split: Optional[str] = _field(
        None, "TFDS split for validation; default: split from the training data."
    )
    tfds_test_split: Optional[str] = _field(None, "TFDS split for the test; default: split from the training data.")
    tfds_download: bool = _field(
        False, "Let TFDS download and prepare a tfds: dataset missing from the data folder."
    )
    validation_fraction: float = _field(0.1, "Share of the data held out for validation.")
    test_fraction: float = _field(0.1, "Share of the data held out for the test.")
    max_seq_length: int = _field(128, "Maximum tokens per text, special tokens included.")
    truncation: str = _field(
        "head",
        "Tokens kept of longer texts: head (the start), tail (the end) or head_tail (a quarter "
        "from the start, the rest from the end).",
    )
    max_train_samples: Optional[int] = _field(None, "Use at most this many training examples.")
    max_eval_samples: Optional[int] = _field(
        None, "Use at most this many validation and test examples each."
    )

    # Training.
    output_dir: Optional[str] = _field(
        None, "Run folder for weights, config, results and logs; required for train."
    )
    overwrite_output_dir: bool = _field(
        False, "Replace an earlier run in output_dir, finished or not, instead of rejecting or resuming it."
    )
    num_train_epochs: int = _field(3, "Number of training epochs.")
    per_device_train_batch_size: int = _field(16, "Training examples per batch on each device.")
    per_device_eval_batch_size: int = _field(64, "Evaluation examples per batch on each device.")
    learning_rate: float = _field(1e-4, "Peak learning rate of AdamW.")
    lr_scheduler_type: str = _field("linear", "Learning-rate schedule: linear, cosine or constant.")
    warmup_ratio: float = _field(0.0, "Share of the training steps spent warming up linearly.")
    weight_decay: float = _field(0.0, "AdamW weight decay; biases and LayerNorm are exempt.")
    max_grad_norm: float = _field(1.0, "Clip the global gradient norm to this value; 0 turns it off.")
    eval_strategy: str = _field("epoch", "Evaluate on the validation split: epoch or no.")
    save_strategy: str = _field("epoch", "Checkpoint the best weights so far: epoch or no.")
    metric_for_best_model: str = _field(
        "macro_f1", "Validation metric that picks the best epoch: macro_f1, accuracy, loss, ..."
    )
    early_stopping_patience: Optional[int] = _field(
        None, "Stop after this many epochs without a better validation metric."
    )
    logging_dir: Optional[str] = _field(None, "TensorBoard event folder; default OUTPUT_DIR/logs.")
    class_weight: str = _field(
        "none", "Loss weight per class: none, or balanced (examples / (classes * class examples))."
    )
    seed: int = _field(42, "Seed of the split, the shuffling and the head's initial weights.")
    bucket_by_length: bool = _field(
        True, "Batch training texts of similar length together, so less padding is computed."
    )
    mixed_precision: bool = _field(
        False, "Compute in float16 on GPU, bfloat16 on CPU; the head and the loss stay float32."
    )
    feature_cache: bool = _field(
        True,
        "Run a frozen bottom of the backbone once per split and train on its cached output "
        "(head and last_n policies); the cache folder is TFPEFT_CACHE_DIR.",
    )

    # Distribution.
    strategy: str = _field(
        "auto",
        "Distribution strategy: auto, one_device, mirrored, multi_worker or tpu. auto takes "
        "multi_worker when TF_CONFIG lists a cluster, mirrored with several GPUs, else one_device.",
    )
    collective_timeout: int = _field(
        1800, "Seconds a multi-worker collective may wait for the other workers; 0 waits forever."
    )
    tpu_name: Optional[str] = _field(
        None, "For strategy=tpu: TPU name, 'local' or grpc:// address; unset takes it from the environment."
    )
    tpu_zone: Optional[str] = _field(None, "For strategy=tpu: the GCP zone of a TPU given by name.")
    gcp_project: Optional[str] = _field(None, "For strategy=tpu: the GCP project of a TPU given by name.")

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Check every field; raise ``ConfigError`` naming the first invalid one."""
        for field in dataclasses.fields(self):
            _check_type(field, getattr(self, field.name))

        def require(condition, name, allowed):
            if not condition:
                raise ConfigError(f"Invalid {name}={getattr(self, name)!r}: {allowed}.")

        require(self.num_train_epochs >= 1, "num_train_epochs", "use 1 or more")
        require(self.per_device_train_batch_size >= 1, "per_device_train_batch_size", "use 1 or more")
        require(self.per_device_eval_batch_size >= 1, "per_device_eval_batch_size", "use 1 or more")
        require(self.learning_rate > 0, "learning_rate", "use a positive number such as 1e-4")
        require(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", "use a value in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", "use 0 or more")
        require(self.max_grad_norm >= 0, "max_grad_norm", "use 0 (off) or more")
        require(0.0 <= self.classifier_dropout < 1.0, "classifier_dropout", "use a value in [0, 1)")
        require(self.max_seq_length >= 2, "max_seq_length", "use 2 or more tokens")
        require(0.0 <= self.validation_fraction < 1.0, "validation_fraction", "use a value in [0, 1)")
        require(0.0 <= self.test_fraction < 1.0, "test_fraction", "use a value in [0, 1)")
        held_out = self.validation_fraction + self.test_fraction
        if held_out >= 1.0:
            raise ConfigError(
                f"Invalid validation_fraction={self.validation_fraction!r} and test_fraction="
                f"{self.test_fraction!r}: together they hold out {held_out:g} of the data, leaving "
                "nothing to train on. Use fractions that add up to less than 1 (0 and 0 hold out "
                "nothing)."
            )
        require(self.lr_scheduler_type in SCHEDULER_TYPES, "lr_scheduler_type", f"use one of {', '.join(SCHEDULER_TYPES)}")
        require(self.eval_strategy in EVAL_STRATEGIES, "eval_strategy", "use 'epoch' or 'no'")
        require(self.save_strategy in SAVE_STRATEGIES, "save_strategy", "use 'epoch' or 'no'")
        require(self.strategy in STRATEGIES, "strategy", f"use one of {', '.join(STRATEGIES)}")
        require(0 <= self.seed <= MAX_SEED, "seed", f"use an integer from 0 to {MAX_SEED} (2**32 - 1)")
        require(self.collective_timeout >= 0, "collective_timeout", "use 0 (no timeout) or more seconds")
        require(self.best_metric in METRICS, "metric_for_best_model", f"use one of {', '.join(METRICS)}")
        for name in ("max_train_samples", "max_eval_samples", "early_stopping_patience"):
            value = getattr(self, name)
            require(value is None or value >= 1, name, "use 1 or more, or leave it unset")
        if self.early_stopping_patience is not None and self.eval_strategy == "no":
            raise ConfigError(
                "early_stopping_patience needs a validation metric each epoch, but "
                "eval_strategy='no'. Set eval_strategy='epoch' or drop early_stopping_patience."
            )
        require(self.truncation in TRUNCATIONS, "truncation", f"use one of {', '.join(TRUNCATIONS)}")
        require(self.encoding_errors in ENCODING_ERRORS, "encoding_errors", "use 'strict' or 'replace'")
        require(self.on_empty_text in EMPTY_TEXT_ACTIONS, "on_empty_text", "use 'drop' or 'error'")
        require(self.class_weight in CLASS_WEIGHTS, "class_weight", "use 'none' or 'balanced'")
        require(_is_codec(self.encoding), "encoding", "use a Python codec name such as utf-8, latin-1 or cp1252")
        self._validate_data_sources()

        from tfpeft.policies import parse_policy

        parse_policy(self.policy)

    def _validate_data_sources(self):
        if self.dataset is not None and self.train_file is not None:
            raise ConfigError(
                f"Both dataset={self.dataset!r} and train_file={self.train_file!r} are set; "
                "pass one source of training data."
            )
        is_tfds = self.dataset is not None and self.dataset.startswith(TFDS_PREFIX)
        if is_tfds and not self.dataset[len(TFDS_PREFIX):]:
            raise ConfigError(f"Invalid dataset={self.dataset!r}: name the TFDS dataset, e.g. tfds:imdb_reviews.")
        tfds_settings = ("tfds_data_dir", "tfds_validation_split", "tfds_test_split")
        for name in tfds_settings:
            if getattr(self, name) is not None and not is_tfds:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} applies only to TFDS datasets, but "
                    f"dataset={self.dataset!r}. Pass --dataset tfds:NAME, or drop {name}."
                )
        for role in ("validation", "test"):
            path, split = getattr(self, f"{role}_file"), getattr(self, f"tfds_{role}_split")
            if path is not None and split is not None:
                raise ConfigError(
                    f"Both {role}_file={path!r} and tfds_{role}_split={split!r} are set; pass one "
                    f"source of {role} data."
                )

    @property
    def best_metric(self):
        """``metric_for_best_model`` without the optional ``val_`` or ``eval_`` prefix."""
        for prefix in ("val_", "eval_"):
            if self.metric_for_best_model.startswith(prefix):
                return self.metric_for_best_model[len(prefix):]
        return self.metric_for_best_model

    @property
    def greater_is_better(self):
        return self.best_metric != "loss"

    def to_dict(self):
        """Return the fields as a dict, leaving out unset (None) ones as TOML cannot hold None."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    def to_toml(self, path):
        """Write the config as a flat TOML file that ``from_toml`` reads back."""
        import tomli_w

        with open(path, "wb") as file:
            tomli_w.dump(self.to_dict(), file)

    @classmethod
    def from_toml(cls, path, **overrides):
        """Read a TOML file; keyword arguments that are not None override its values."""
        return cls.from_dict(read_toml(path), source=path, **overrides)

    @classmethod
    def from_dict(cls, values, *, source="keyword arguments", **overrides):
        """Build a config from ``values`` and ``overrides``, mapping deprecated names.

        Errors name ``source``: every unknown setting with its closest field name, a nested
        table, and a value of the wrong type read from ``values``.
        """
        tables = sorted(key for key, value in values.items() if isinstance(value, dict))
        if tables:
            raise ConfigError(
                f"{source} has the table(s) {', '.join(f'[{name}]' for name in tables)}, but the "
                "config file must be flat: put settings at the top level, above any table, e.g. "
                "num_train_epochs = 3."
            )
        overrides = {key: value for key, value in overrides.items() if value is not None}
        merged = _map_deprecated_names({**values, **overrides})
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - set(fields))
        if unknown:
            problems = []
            for name in unknown:
                suggestion = closest_match(name, fields)
                problems.append(f"{name!r}" + (f" (did you mean {suggestion!r}?)" if suggestion else ""))
            raise ConfigError(
                f"Unknown setting{'s' if len(unknown) > 1 else ''} in {source}: "
                f"{', '.join(problems)}. The settings are the fields of TrainingConfig, listed "
                "by `tfpeft train --help`."
            )
        for name, value in _map_deprecated_names(values, warn=False).items():
            if name not in overrides:
                _check_type(fields[name], value, source)
        return cls(**merged)

    def replace(self, **changes):
        """Return a copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)


def _map_deprecated_names(values, *, warn=True, stacklevel=3):
    """Return ``values`` with deprecated names replaced by the current ones; warn for each."""
    values = dict(values)
    for old, new in DEPRECATED_NAMES.items():
        if old in values:
            if warn:
                warnings.warn(
                    f"{old} is deprecated, as in transformers' TrainingArguments; use {new}.",
                    TfpeftWarning,
                    stacklevel=stacklevel,
                )
            value = values.pop(old)
            values.setdefault(new, value)
    return values


_dataclass_init = TrainingConfig.__init__


@functools.wraps(_dataclass_init)
def _init_with_deprecated_names(self, *args, **kwargs):
    # TrainingArguments still takes evaluation_strategy, so tutorial code passes it here too.
    _dataclass_init(self, *args, **_map_deprecated_names(kwargs))


TrainingConfig.__init__ = _init_with_deprecated_names


def read_toml(path):
    """Return the tables of a TOML file; a missing or invalid file raises ``ConfigError``."""
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"The config file {path!r} does not exist.") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"The config file {path!r} is not valid TOML: {error}") from error


def field_type(field):
    """Return the plain type of a config field: int, float, str or bool."""
    hint = typing.get_type_hints(TrainingConfig)[field.name]
    arguments = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return arguments[0] if arguments else hint


def _check_type(field, value, source=None):
    where = f" in {source}" if source else ""
    if value is None:
        if field.default is None:
            return
        raise ConfigError(f"Invalid {field.name}=None{where}: this setting needs a value.")
    expected = field_type(field)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        raise ConfigError(
            f"Invalid {field.name}={value!r}{where}: expected {expected.__name__}, got "
            f"{type(value).__name__}."
        )


def _is_codec(name):
    import codecs

    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True
