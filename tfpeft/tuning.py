"""KerasTuner search over training settings, for tf_keras models.

KerasTuner 1.4.8's stock tuners reject tf_keras models (they check for a Keras 3 ``Model``),
so ``PeftTuner`` subclasses ``keras_tuner.Tuner`` and overrides ``run_trial`` to train the
classifier itself. Any KerasTuner oracle drives it: random, Bayesian, Hyperband or grid.

One search loads the backbone and tokenizes the data once. The classifier is built once and,
before every trial, its weights are reset to the pretrained backbone and the initial head, so
no trial starts from another trial's weights. Hyperband's promoted trials are the exception:
they continue from the weights their earlier run saved. Trials that share the settings traced
into a train function (policy, dropout, weight decay, ...) also share one compiled model, so
memory stays flat however many trials run.

Under ``head`` and ``last_n:K`` trials train on cached features. The search computes them once
at the shallowest cut any trial needs (the largest ``unfreeze_depth``), derives each deeper
freeze from them by running the frozen blocks in between (``tfpeft.features.FeatureSource``),
and trains a compiled top model per traced settings on the cached tensors.

KerasTuner can spread one search over several machines (a chief oracle and workers found
through ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT``). ``tune`` rejects that mode:
its trial summaries, ``trials.csv`` and the Hyperband checkpoints live in one local folder, and
a worker's ``oracle`` is a network proxy that has no trial list to write them from.
"""

import csv
import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import shutil
import time

import numpy as np

from tfpeft.errors import ConfigError, OutputDirError, TfpeftError
from tfpeft.progress import Progress
from tfpeft.search_space import LORA_R, UNFREEZE_DEPTH, check_space_policy, default_space, parse_space

logger = logging.getLogger("tfpeft.tuning")

TUNERS = ("random", "bayesian", "hyperband", "grid")
OBJECTIVES = {"val_macro_f1": "max", "val_accuracy": "max", "val_loss": "min"}
TUNING_DIR = "tuning"
SEARCH_FILE = "search.json"
TRIALS_FILE = "trials.csv"
BEST_CONFIG_FILE = "best_config.toml"
BEST_RUN_DIR = "best"
PROJECT_NAME = "keras_tuner"
# Hyperband bookkeeping entries that KerasTuner adds to every trial's hyperparameters.
HYPERBAND_PREFIX = "tuner/"


@dataclasses.dataclass
class TuningOptions:
    """How the search runs, apart from the training settings it varies.

    Args:
        tuner: str. The oracle: ``random``, ``bayesian``, ``hyperband`` or ``grid``.
        max_trials: int or None. Trials to run; not for Hyperband, whose count follows from
            ``max_epochs`` and ``factor``. Default 10 (grid: every combination).
        executions_per_trial: int. Trainings per trial with different shuffling seeds; the
            objective is their mean, which lowers the noise of small validation sets.
        max_epochs: int or None. Hyperband's largest epoch budget; default the config's
            ``num_train_epochs``.
        factor: int. Hyperband's reduction factor.
        objective: str. ``val_macro_f1`` (default), ``val_accuracy`` or ``val_loss``.
        max_consecutive_failed_trials: int. Stop the search after this many failures in a row.
    """

    tuner: str = "random"
    max_trials: int = None
    executions_per_trial: int = 1
    max_epochs: int = None
    factor: int = 3
    objective: str = "val_macro_f1"
    max_consecutive_failed_trials: int = 3

    def __post_init__(self):
        if self.tuner not in TUNERS:
            raise ConfigError(f"Invalid tuner={self.tuner!r}; use one of: {', '.join(TUNERS)}.")
        if self.tuner == "hyperband" and self.max_trials is not None:
            raise ConfigError(
                f"max_trials={self.max_trials} does not apply to the hyperband tuner: its trial count "
                "follows from max_epochs and factor. Drop --max-trials or pick another tuner."
            )
        if self.max_trials is not None and self.max_trials < 1:
            raise ConfigError(f"Invalid max_trials={self.max_trials}: use 1 or more.")
        if self.executions_per_trial < 1:
            raise ConfigError(f"Invalid executions_per_trial={self.executions_per_trial}: use 1 or more.")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigError(f"Invalid max_epochs={self.max_epochs}: use 1 or more.")
        if self.factor < 2:
            raise ConfigError(f"Invalid factor={self.factor}: Hyperband needs 2 or more.")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"Invalid objective={self.objective!r}; use one of: {', '.join(OBJECTIVES)}.")


@dataclasses.dataclass
class TuneResult:
    """The result of ``tune``: the trials, the best config and the retrained run, if any."""

    tuning_dir: str
    trials: list
    best_config: object
    trials_run: int
    best_run: object = None


def _make_oracle(options, hyperparameters, num_train_epochs, seed):
    import keras_tuner

    objective = keras_tuner.Objective(options.objective, direction=OBJECTIVES[options.objective])
    common = dict(
        objective=objective,
        hyperparameters=hyperparameters,
        seed=seed,
        tune_new_entries=False,
        allow_new_entries=False,
        max_consecutive_failed_trials=options.max_consecutive_failed_trials,
    )
    max_trials = options.max_trials or 10
    if options.tuner == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if options.tuner == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(max_trials=max_trials, **common)
    if options.tuner == "grid":
        return keras_tuner.oracles.GridSearchOracle(max_trials=options.max_trials, **common)
    return keras_tuner.oracles.HyperbandOracle(
        max_epochs=options.max_epochs or num_train_epochs, factor=options.factor, **common
    )


def _declare_space(space, options):
    import keras_tuner

    hyperparameters = keras_tuner.HyperParameters()
    for parameter in space:
        if options.tuner == "grid" and parameter.kind in ("log", "float") and parameter.step is None:
            raise ConfigError(
                f"Grid search needs a finite set of values, but {parameter.name}={parameter.spec()} "
                f"is a continuous range. Add a step ({parameter.spec()}:STEP) or list the values "
                f"(choice:...)."
            )
        if options.tuner == "hyperband" and parameter.name == "num_train_epochs":
            raise ConfigError(
                "num_train_epochs cannot be searched under Hyperband: the oracle's epoch budget "
                "(--max-epochs) takes its place. Remove it from the search space."
            )
        parameter.declare(hyperparameters)
    return hyperparameters


def _trial_config(base, values):
    """Return ``base`` with a trial's hyperparameter values applied."""
    changes = {name: value for name, value in values.items() if not name.startswith(HYPERBAND_PREFIX)}
    depth = changes.pop(UNFREEZE_DEPTH, None)
    if depth is not None:
        changes["policy"] = f"last_n:{int(depth)}"
    rank = changes.pop(LORA_R, None)
    if rank is not None:
        from tfpeft.policies import Policy, parse_policy

        # check_space_policy made sure the base policy is lora. Its dropout and targets stay, and
        # so does an alpha the policy sets; without one, alpha follows the rank (2 * r).
        lora = parse_policy(base.policy).lora.replace(r=int(rank))
        if "alpha=" not in str(base.policy):
            lora = lora.replace(alpha=2.0 * int(rank))
        changes["policy"] = Policy("lora", lora=lora).name
    return base.replace(**changes)


def _release_memory():
    """Collect garbage and return freed heap pages to the system where glibc allows it.

    Without ``malloc_trim``, glibc keeps the peak of each trial's activations mapped, and the
    resident memory of a search creeps up trial after trial although nothing leaks.
    """
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (macOS, musl): nothing to trim


def _resident_memory_mb():
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _weights_fingerprint(variables):
    """Return a SHA-256 of the variables' values, in name order: Keras lists trainable ones first."""
    digest = hashlib.sha256()
    for variable in sorted(variables, key=lambda variable: variable.name):
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def _base_variables(backbone):
    """Return the backbone's own variables, without LoRA adapters, which start anew each trial."""
    from tfpeft.lora import adapter_variables

    adapter_ids = {id(variable) for variable in adapter_variables(backbone)}
    return [variable for variable in backbone.main_layer.weights if id(variable) not in adapter_ids]


class _TrialFailed(Exception):
    """A trial that cannot finish; the search records it and goes on."""


class SearchFailedError(TfpeftError, RuntimeError):
    """A search that ended without a usable trial."""


# Settings that are traced into a compiled train function as Python constants: trials that
# differ in one of them need their own compiled model.
TRACED_SETTINGS = (
    "policy",
    "pooling",
    "frozen_dropout",
    "classifier_dropout",
    "weight_decay",
    "max_grad_norm",
    "lr_scheduler_type",
)


def _trial_schedule(decay):
    """Return a ``WarmupDecaySchedule`` whose rate and step counts are variables, set per trial."""
    import tensorflow as tf

    from tfpeft.training import WarmupDecaySchedule

    class TrialSchedule(WarmupDecaySchedule):
        def __init__(self):
            super().__init__(1.0, 1, 0, decay)
            self.peak_variable = tf.Variable(1.0, trainable=False, name="peak_learning_rate")
            self.total_variable = tf.Variable(1.0, trainable=False, name="total_steps")
            self.warmup_variable = tf.Variable(0.0, trainable=False, name="warmup_steps")

        def set(self, peak_learning_rate, total_steps, warmup_steps):
            self.peak_variable.assign(peak_learning_rate)
            self.total_variable.assign(float(total_steps))
            self.warmup_variable.assign(float(warmup_steps))

        def schedule_values(self):
            return self.peak_variable, self.total_variable, self.warmup_variable

    return TrialSchedule()


def _make_tuner_class():
    import keras_tuner

    class PeftTuner(keras_tuner.Tuner):
        """A ``keras_tuner.Tuner`` whose trials fine-tune a tfpeft classifier.

        Args:
            oracle: a KerasTuner oracle with the search space declared.
            search: ``_Search``, the data, model and settings shared by all trials.
            **kwargs: ``directory``, ``project_name`` and ``overwrite`` of ``keras_tuner.Tuner``.
        """

        def __init__(self, oracle, search, **kwargs):
            self.search_state = search
            super().__init__(oracle, **kwargs)

        def run_trial(self, trial, *args, **kwargs):
            try:
                return self.search_state.run_trial(trial)
            except Exception as error:
                # Any error fails this trial only; KerasTuner stops the search after
                # max_consecutive_failed_trials failures in a row.
                self.search_state.record_failure(trial, error)
                raise keras_tuner.errors.FailedTrialError(str(error)) from error

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            self.search_state.write_trials(self.oracle)

    return PeftTuner


def _searched_policies(base_config, space):
    """Return every policy name a trial of the search can train with."""
    for parameter in space:
        if parameter.name == UNFREEZE_DEPTH:
            if parameter.kind == "choice":
                depths = parameter.values
            else:
                depths = range(int(parameter.min_value), int(parameter.max_value) + 1, int(parameter.step or 1))
            return [f"last_n:{int(depth)}" for depth in depths]
    return [base_config.policy]


def _feature_source(model, backbone, data, config, space, progress):
    """Return the search's ``FeatureSource``, or None where no trial can train on cached features.

    The source cut is the shallowest one any trial needs (the largest unfreeze depth): its
    features are computed once, and every deeper freeze is derived from them.
    """
    from tfpeft.features import FeatureSource, find_cut
    from tfpeft.policies import parse_policy

    if not config.feature_cache:
        logger.info("Feature cache off: feature_cache=False")
        return None
    policies = [parse_policy(name) for name in _searched_policies(config, space)]
    cuts = [find_cut(backbone, policy, config.pooling, config.frozen_dropout) for policy in policies]
    cuts = [cut for cut in cuts if cut is not None]
    if not cuts:
        return None
    hidden_depths = [cut.depth for cut in cuts if cut.kind == "hidden"]
    source_depth = min(hidden_depths) if hidden_depths else None
    return FeatureSource(model, backbone, data, config, progress=progress, source_depth=source_depth)


class _Search:
    """The state one search shares across trials: data, classifier, initial weights, files."""

    def __init__(self, base_config, options, space, backbone, data, strategy, tuning_dir, progress):
        import tf_keras

        from tfpeft.model import build_classifier

        self.base_config = base_config
        self.options = options
        self.space = space
        self.backbone = backbone
        self.data = data
        self.strategy = strategy
        self.tuning_dir = tuning_dir
        self.progress = progress
        self.trials_run = 0
        # Set by `tune` once the trial count is known; None prints no trial count.
        self.trial_task = None

        with strategy.scope():
            tf_keras.utils.set_random_seed(base_config.seed)
            self.model = build_classifier(
                backbone,
                data.label_map.num_labels,
                pooling=base_config.pooling,
                dropout=base_config.classifier_dropout,
            )
        # The pretrained backbone and the initial head, restored before every new trial.
        self.variants = {}
        self.class_weight = None
        if base_config.class_weight == "balanced":
            from tfpeft.data.labels import balanced_class_weights

            self.class_weight = balanced_class_weights(data.label_ids["train"], data.label_map.num_labels)
        # Paired with their variables, because model.weights reorders when `trainable` changes.
        self.initial_weights = [(variable, variable.numpy()) for variable in self.model.weights]
        self.pretrained_fingerprint = _weights_fingerprint(_base_variables(backbone))
        self.features = _feature_source(self.model, backbone, data, base_config, space, progress)

    def trial_dir(self, trial_id):
        return os.path.join(self.tuning_dir, "trials", f"trial_{trial_id}")

    def _summary_path(self, trial_id):
        return os.path.join(self.trial_dir(trial_id), "summary.json")

    def _write_summary(self, trial_id, summary):
        os.makedirs(self.trial_dir(trial_id), exist_ok=True)
        with open(self._summary_path(trial_id), "w", encoding="utf-8") as file:
            json.dump(summary, file, indent=2)

    def read_summary(self, trial_id):
        path = self._summary_path(trial_id)
        if not os.path.exists(path):
            return {}
        with open(path, encoding="utf-8") as file:
            return json.load(file)

    def record_failure(self, trial, error):
        summary = self.read_summary(trial.trial_id)
        summary.update(status="FAILED", error=str(error))
        self._write_summary(trial.trial_id, summary)
        self._report_trial_end(f"trial {trial.trial_id} failed: {error}")

    def _report_trial_end(self, detail):
        """Print a finished trial with the trials done, the elapsed and the remaining time."""
        if self.trial_task is None:
            self.progress.step(detail[0].upper() + detail[1:])
        else:
            self.trial_task.advance(1, detail=detail, force=True)

    def _reset_weights(self, values, config):
        """Restore the initial weights, or a Hyperband trial's own earlier weights.

        A trial's checkpoint holds only what its policy trains, so the policy is applied
        before reading it; everything else is the pretrained weights restored first.
        """
        from tfpeft.checkpoints import read_trainable
        from tfpeft.policies import apply_policy

        for variable, value in self.initial_weights:
            variable.assign(value)
        previous = values.get("tuner/trial_id")
        if previous:
            apply_policy(self.backbone, config.policy, pooling=config.pooling, frozen_dropout=config.frozen_dropout)
            path = os.path.join(self.trial_dir(previous), "weights")
            for variable, value in zip(self.model.trainable_variables, read_trainable(self.model, path, self.backbone)):
                variable.assign(value)
        return previous

    def _prepare_adapters(self, config):
        """Give the backbone fresh LoRA adapters of the trial's settings, or none for other policies.

        The search shares one backbone, so adapters of another rank come off first, with the
        compiled models that traced them; adapters of the same settings start again from a new
        random A and a zero B.
        """
        from tfpeft.lora import applied_config, drop_adapters, reset_adapters
        from tfpeft.policies import apply_policy, parse_policy

        policy = parse_policy(config.policy)
        current = applied_config(self.backbone)
        if current is not None and (policy.kind != "lora" or policy.lora != current):
            drop_adapters(self.backbone)
            self.variants = {key: value for key, value in self.variants.items() if not key[0].startswith("lora")}
        if policy.kind == "lora":
            with self.strategy.scope():
                apply_policy(self.backbone, policy, pooling=config.pooling, frozen_dropout=config.frozen_dropout)
            reset_adapters(self.backbone)

    def _trial_features(self, trial_id, config):
        """Return the ``CachedFeatures`` a trial trains on, or None to train the full model.

        Cuts are computed or derived with the pretrained weights, which are restored first: a
        deeper freeze runs blocks that an earlier trial trained.
        """
        from tfpeft.features import CachedFeatures, find_cut
        from tfpeft.policies import parse_policy

        if self.features is None or not config.feature_cache:
            return None
        cut = find_cut(self.backbone, parse_policy(config.policy), config.pooling, config.frozen_dropout)
        if cut is None:
            logger.info("Feature cache: trial %s (policy %s) trains the full model", trial_id, config.policy)
            return None
        for variable, value in self.initial_weights:
            variable.assign(value)
        arrays = self.features.arrays(cut, config.pooling)
        logger.info(
            "Feature cache: trial %s (policy %s) trains on %s", trial_id, config.policy, cut.describe(self.backbone)
        )
        # The top model comes from the compiled variant of the trial's settings.
        return CachedFeatures(cut, None, arrays, self.data)

    def _compiled_variant(self, config, cached=None):
        """Return ``(model, schedule)`` compiled for ``config``'s traced settings.

        Every compile traces a new train function of the whole backbone, and TensorFlow 2.21
        keeps each traced graph alive (about 100 MB for MiniLM), so a search that recompiled
        for every trial grew by that much per trial. Instead, trials that share the traced
        settings share one compiled model, whose layers are the search's classifier, and only
        reset its optimizer state and set its learning-rate variables. Trials on cached
        features share a compiled top model (``build_top_model``) the same way.
        """
        import tf_keras

        from tfpeft.features import build_top_model
        from tfpeft.policies import apply_policy
        from tfpeft.training import compile_classifier

        key = tuple(getattr(config, name) for name in TRACED_SETTINGS) + (cached.cut if cached else None,)
        with self.strategy.scope():
            apply_policy(self.backbone, config.policy, pooling=config.pooling, frozen_dropout=config.frozen_dropout)
            if key not in self.variants:
                self.model.get_layer("head_dropout").rate = config.classifier_dropout
                if cached is None:
                    variant = tf_keras.Model(self.model.inputs, self.model.outputs, name=f"{self.model.name}_{len(self.variants)}")
                else:
                    variant = build_top_model(self.model, self.backbone, cached.cut, config.pooling)
                schedule = _trial_schedule(config.lr_scheduler_type)
                compile_classifier(variant, config, total_steps=1, schedule=schedule)
                self.variants[key] = (variant, schedule)
        variant, schedule = self.variants[key]
        # The dropout rate is read when a train function is traced; later variants may differ.
        self.model.get_layer("head_dropout").rate = config.classifier_dropout
        for variable in variant.optimizer.variables:
            variable.assign(tf_keras.backend.zeros_like(variable))
        return variant, schedule

    def run_trial(self, trial):
        import tensorflow as tf
        import tf_keras

        from tfpeft.training import EpochEvaluation

        values = dict(trial.hyperparameters.values)
        config = _trial_config(self.base_config, values)
        initial_epoch = int(values.get("tuner/initial_epoch", 0))
        epochs = int(values.get("tuner/epochs", config.num_train_epochs))
        shown = ", ".join(f"{name}={value}" for name, value in values.items() if not name.startswith(HYPERBAND_PREFIX))
        self.progress.step(f"Trial {trial.trial_id}: {shown}")
        self.trials_run += 1
        start = time.monotonic()

        train_batch = config.per_device_train_batch_size * self.strategy.num_replicas_in_sync
        eval_batch = config.per_device_eval_batch_size * self.strategy.num_replicas_in_sync
        steps_per_epoch = math.ceil(len(self.data.splits["train"]) / train_batch)
        metric = self.options.objective[len("val_"):]
        scores = []
        summary = {"trial_id": trial.trial_id, "hyperparameters": values, "status": "RUNNING"}
        self._write_summary(trial.trial_id, summary)
        total_steps = steps_per_epoch * max(epochs - initial_epoch, 1)
        cached = self._trial_features(trial.trial_id, config)
        summary["feature_cache"] = cached.cut.describe(self.backbone) if cached else "off"
        fit_data = cached or self.data
        for execution in range(self.options.executions_per_trial):
            _release_memory()
            self._prepare_adapters(config)
            promoted_from = self._reset_weights(values, config)
            summary["promoted_from"] = promoted_from
            summary["backbone_start_sha256"] = _weights_fingerprint(_base_variables(self.backbone))
            model, schedule = self._compiled_variant(config, cached)
            schedule.set(config.learning_rate, total_steps, math.ceil(config.warmup_ratio * total_steps))
            evaluation = EpochEvaluation(
                fit_data.dataset("validation", eval_batch, with_labels=False),
                self.data.label_ids["validation"],
                self.data.label_map.names,
                metric=metric,
            )
            train_dataset = fit_data.dataset("train", train_batch, shuffle=True, seed=config.seed + execution)
            try:
                history = model.fit(
                    train_dataset,
                    initial_epoch=initial_epoch,
                    epochs=epochs,
                    callbacks=[tf_keras.callbacks.TerminateOnNaN(), evaluation],
                    class_weight=self.class_weight,
                    verbose=0,
                )
            except tf.errors.ResourceExhaustedError as error:
                raise _TrialFailed(f"out of memory: {error.message.splitlines()[0]}") from error
            losses = history.history.get("loss", [])
            if not losses or not all(np.isfinite(losses)):
                raise _TrialFailed(
                    f"the training loss became {losses[-1] if losses else 'undefined'} in epoch "
                    f"{initial_epoch + len(losses)}; learning_rate={config.learning_rate} may be too high"
                )
            scores.append(evaluation.best_value)
            summary["epochs"] = len(losses)

        if "tuner/trial_id" in values or self.options.tuner == "hyperband":
            from tfpeft.checkpoints import save_trainable

            # Only what trains: a later Hyperband round starts from the pretrained weights plus these.
            save_trainable(self.model, os.path.join(self.trial_dir(trial.trial_id), "weights"), self.backbone)
        objective = float(np.mean(scores))
        summary.update(
            status="COMPLETED",
            objective=objective,
            seconds=round(time.monotonic() - start, 3),
            error="",
            resident_memory_mb=round(_resident_memory_mb(), 1),
        )
        self._write_summary(trial.trial_id, summary)
        self._report_trial_end(f"trial {trial.trial_id}: {self.options.objective} {objective:.4f}")
        return {self.options.objective: objective}

    def write_trials(self, oracle):
        """Write ``trials.csv``: one row per trial with its settings, objective and status."""
        names = [parameter.name for parameter in self.space]
        rows = []
        for trial_id, trial in sorted(oracle.trials.items()):
            summary = self.read_summary(trial_id)
            values = trial.hyperparameters.values
            score = trial.score if trial.status == "COMPLETED" else summary.get("objective")
            rows.append(
                {
                    "trial_id": trial_id,
                    **{name: values.get(name, "") for name in names},
                    "objective": "" if score is None else score,
                    "epochs": summary.get("epochs", ""),
                    "seconds": summary.get("seconds", ""),
                    "status": trial.status,
                    "error": summary.get("error", "") if trial.status != "COMPLETED" else "",
                }
            )
        path = os.path.join(self.tuning_dir, TRIALS_FILE)
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(
                file, fieldnames=["trial_id", *names, "objective", "epochs", "seconds", "status", "error"]
            )
            writer.writeheader()
            writer.writerows(rows)
        return rows


def _planned_trials(options, space):
    """Return how many trials the search runs in all, or 0 where the oracle decides (Hyperband)."""
    if options.tuner == "hyperband":
        return 0
    if options.tuner != "grid":
        return options.max_trials or 10
    combinations = 1
    for parameter in space:
        if parameter.kind == "choice":
            combinations *= len(parameter.values)
        else:
            step = parameter.step or 1
            combinations *= int(round((parameter.max_value - parameter.min_value) / step)) + 1
    return min(combinations, options.max_trials or combinations)


def _search_identity(config, options, space):
    """Return what makes two searches the same, for the resume check."""
    settings = config.to_dict()
    for name in ("output_dir", "overwrite_output_dir", "logging_dir"):
        settings.pop(name, None)
    return {
        "config": settings,
        "options": dataclasses.asdict(options),
        "space": {parameter.name: parameter.spec() for parameter in space},
    }


def _prepare_tuning_dir(config, identity):
    """Create ``OUTPUT_DIR/tuning``, resume the same search there, or refuse another one."""
    tuning_dir = os.path.join(config.output_dir, TUNING_DIR)
    search_path = os.path.join(tuning_dir, SEARCH_FILE)
    if os.path.exists(search_path):
        with open(search_path, encoding="utf-8") as file:
            previous = json.load(file)
        if previous == identity:
            return tuning_dir, True
        if not config.overwrite_output_dir:
            differing = _first_difference(previous, identity)
            raise OutputDirError(
                f"{config.output_dir!r} contains a different search ({differing}). Choose another "
                "--output-dir, or pass --overwrite-output-dir to delete that search and start over."
            )
        shutil.rmtree(tuning_dir)
        shutil.rmtree(os.path.join(config.output_dir, BEST_RUN_DIR), ignore_errors=True)
    elif os.path.isdir(config.output_dir) and os.listdir(config.output_dir):
        raise OutputDirError(
            f"output_dir {config.output_dir!r} is not empty and contains no tfpeft search. Choose a "
            "new folder for the search."
        )
    os.makedirs(tuning_dir, exist_ok=True)
    with open(search_path, "w", encoding="utf-8") as file:
        json.dump(identity, file, indent=2)
    return tuning_dir, False


def _first_difference(previous, current):
    for section in ("config", "options", "space"):
        old, new = previous.get(section, {}), current.get(section, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return f"{section} {key}: {old.get(key)!r} there, {new.get(key)!r} now"
    return "unknown difference"


def _format_trials(rows, names, objective):
    header = ["trial", *names, objective, "epochs", "seconds", "status"]
    lines = ["  ".join(f"{title:>14}" for title in header)]
    for row in rows:
        cells = [row["trial_id"], *(row[name] for name in names), row["objective"], row["epochs"], row["seconds"], row["status"]]
        lines.append("  ".join(f"{_short(cell):>14}" for cell in cells))
    return "\n".join(lines)


def _short(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def tune(config=None, *, space=None, options=None, retrain_best=False, verbose=1, **overrides):
    """Search training settings with KerasTuner and write ``OUTPUT_DIR/tuning/``.

    Writes KerasTuner's project files, ``trials.csv`` (one row per trial) and
    ``best_config.toml``, a complete config that ``tfpeft train --config`` accepts. Running the
    same search again on the same folder resumes it and runs no finished trial again.

    Args:
        config: ``TrainingConfig``, a TOML path, or None; the settings every trial starts from.
        space: list of ``SearchParameter``, ``{name: spec}``, ``["name=spec", ...]`` or None for
            the default (``learning_rate`` on a log scale from 1e-5 to 1e-3, and every
            ``unfreeze_depth`` from 0 to the number of blocks).
        options: ``TuningOptions`` or None for the defaults (random search, 10 trials).
        retrain_best: bool. Train the best config into ``OUTPUT_DIR/best/`` and test it.
        verbose: int. 0 prints nothing.
        **overrides: ``TrainingConfig`` fields.

    Returns:
        ``TuneResult``.

    Example:

    >>> result = tfpeft.tune(dataset="bbc_news", output_dir="runs/search",
    ...                      space=["learning_rate=log:1e-5:1e-3", "unfreeze_depth=int:0:2"],
    ...                      options=tfpeft.TuningOptions(max_trials=6))
    """
    from tfpeft.backbones import load_backbone
    from tfpeft.reports import write_search_report
    from tfpeft import distributed
    from tfpeft.training import build_config, check_sequence_limit, load_splits, prepare_data, train

    config = build_config(config, overrides)
    options = options or TuningOptions()
    oracle_settings = [name for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT") if os.environ.get(name)]
    if oracle_settings:
        raise ConfigError(
            f"{', '.join(oracle_settings)} is set, which asks KerasTuner for a distributed search; "
            "tfpeft tune runs on one machine only. Unset it, or run separate searches with "
            "different output folders."
        )
    progress = Progress(verbose)
    if config.output_dir is None:
        raise ConfigError("output_dir is not set: pass --output-dir for the search folder.")

    # Setup errors stop here, before the first trial.
    splits = load_splits(config)
    if "validation" not in splits:
        raise ConfigError("A search needs a validation split for its objective: set validation_fraction > 0 or --validation-file.")
    if distributed.resolve_strategy_name(config.strategy, tf_config=distributed.read_tf_config()) in ("multi_worker", "tpu"):
        raise ConfigError(
            f"strategy={config.strategy!r} with this TF_CONFIG runs on several machines or a TPU, but a "
            "search runs on one machine: use strategy 'one_device' or 'mirrored'."
        )
    strategy = distributed.create_strategy(config)
    with strategy.scope():
        backbone = load_backbone(config.model_name_or_path)
    check_sequence_limit(config.max_seq_length, backbone)
    from tfpeft.policies import parse_policy

    base_policy = parse_policy(config.policy)
    if space is None:
        space = default_space(backbone.num_blocks, base_policy.kind)
    elif not all(hasattr(parameter, "declare") for parameter in space):
        space = parse_space(space)
    check_space_policy(space, base_policy, backbone.num_blocks)
    hyperparameters = _declare_space(space, options)
    identity = _search_identity(config, options, space)
    tuning_dir, resumed = _prepare_tuning_dir(config, identity)
    if resumed:
        progress.step(f"Resuming the search in {tuning_dir}")

    data = prepare_data(config, backbone.tokenizer, splits=splits, progress=progress)
    search = _Search(config, options, space, backbone, data, strategy, tuning_dir, progress)
    oracle = _make_oracle(options, hyperparameters, config.num_train_epochs, config.seed)
    tuner = _make_tuner_class()(
        oracle, search, directory=tuning_dir, project_name=PROJECT_NAME, overwrite=False
    )
    progress.step(f"Searching with the {options.tuner} tuner, objective {options.objective}")
    num_trials = _planned_trials(options, space)
    remaining = num_trials - len(tuner.oracle.trials) if num_trials else 0
    search.trial_task = progress.task("Trials", max(remaining, 0), "trials")
    try:
        tuner.search(verbose=0)
    except RuntimeError as error:
        search.write_trials(tuner.oracle)
        raise SearchFailedError(
            f"The search stopped: {error} The errors of the failed trials are in "
            f"{os.path.join(tuning_dir, TRIALS_FILE)}."
        ) from error

    rows = search.write_trials(tuner.oracle)
    names = [parameter.name for parameter in space]
    progress.block(_format_trials(rows, names, options.objective))
    write_search_report(tuning_dir, objective_name=options.objective, direction=OBJECTIVES[options.objective])
    completed = [trial for trial in tuner.oracle.trials.values() if trial.status == "COMPLETED"]
    if not completed:
        raise SearchFailedError(f"No trial of the search completed; see the errors in {os.path.join(tuning_dir, TRIALS_FILE)}.")
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best_values = dict(best_trial.hyperparameters.values)
    best_config = _trial_config(config, best_values)
    if options.tuner == "hyperband":
        best_config = best_config.replace(num_train_epochs=int(best_values["tuner/epochs"]))
    best_config = best_config.replace(output_dir=os.path.join(config.output_dir, BEST_RUN_DIR))
    _write_best_config(os.path.join(tuning_dir, BEST_CONFIG_FILE), best_config, best_trial, options.objective)
    progress.step(f"Best trial {best_trial.trial_id}: {options.objective} {best_trial.score:.4f}; config in {os.path.join(tuning_dir, BEST_CONFIG_FILE)}")

    trials_run = search.trials_run
    best_run = None
    if retrain_best:
        progress.step(f"Training the best config into {best_config.output_dir}")
        # The search's classifier is not needed any more; free it before a full training run.
        del search, tuner
        gc.collect()
        best_run = train(best_config, verbose=verbose)
    return TuneResult(tuning_dir, rows, best_config, trials_run=trials_run, best_run=best_run)


def _write_best_config(path, config, trial, objective):
    import tomli_w

    with open(path, "w", encoding="utf-8") as file:
        file.write(f"# Best trial {trial.trial_id} of the search: {objective} = {trial.score:.6f}.\n")
        file.write("# Train it with: tfpeft train --config THIS_FILE --output-dir NEW_FOLDER\n")
        file.write(tomli_w.dumps(config.to_dict()))


def read_tuning_file(path):
    """Read a TOML file of training settings with optional ``[search]`` and ``[tuning]`` tables.

    Returns:
        ``(settings, space_specs, option_values)``: the training settings for
        ``TrainingConfig.from_dict``, ``{name: spec}`` for ``parse_space`` and the
        ``TuningOptions`` fields.
    """
    from tfpeft.config import read_toml

    settings = read_toml(path)
    space_specs = settings.pop("search", {})
    option_values = settings.pop("tuning", {})
    known = {field.name for field in dataclasses.fields(TuningOptions)}
    unknown = sorted(set(option_values) - known)
    if unknown:
        raise ConfigError(
            f"Unknown setting {unknown[0]!r} in the [tuning] table of {path!r}; known: {', '.join(sorted(known))}."
        )
    return settings, space_specs, option_values
