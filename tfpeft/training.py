"""Fine-tuning: data preparation, optimizer and schedule, callbacks, fit, and the run folder.

``train`` runs the whole job that ``tfpeft train`` runs. Notebook users can take the same
steps one by one: ``load_backbone``, ``apply_policy``, ``build_classifier``,
``prepare_data``, ``compile_classifier``, then ``model.fit`` and ``evaluate_model``.
"""

import dataclasses
import logging
import math
import os
import time

import numpy as np
import tensorflow as tf
import tf_keras

from tfpeft.config import TrainingConfig
from tfpeft.data import LabelMap, encode_texts_in_chunks, make_dataset
from tfpeft.data.checks import log_class_counts
from tfpeft.data.labels import balanced_class_weights, class_counts
from tfpeft.data.loading import load_splits
from tfpeft.data.pipeline import count_batches, length_boundaries, padding_share
from tfpeft.data.truncation import log_truncation
from tfpeft.errors import ConfigError
from tfpeft.evaluation import compute_metrics, cross_entropy, format_metrics, predict_logits, write_predictions
from tfpeft.progress import Progress

logger = logging.getLogger("tfpeft.training")

# Names of weights that AdamW does not decay, as in transformers' own optimizers. GPT-2 names
# its layer norms ln_1, ln_2 and ln_f.
NO_DECAY_NAMES = ["bias", "LayerNorm", "layer_norm", "/ln_"]


class WarmupDecaySchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to the peak rate, then linear, cosine or no decay to the last step.

    Step ``s`` counts optimizer updates from 0. Without warmup, the first update uses the peak
    rate, as transformers' ``get_linear_schedule_with_warmup`` does.
    """

    def __init__(self, peak_learning_rate, total_steps, warmup_steps=0, decay="linear"):
        super().__init__()
        self.peak_learning_rate = float(peak_learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay

    def schedule_values(self):
        """Return the peak rate, the total steps and the warmup steps as float32 tensors."""
        return (
            tf.constant(self.peak_learning_rate, tf.float32),
            tf.constant(float(self.total_steps), tf.float32),
            tf.constant(float(self.warmup_steps), tf.float32),
        )

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak, total_steps, warmup_steps = self.schedule_values()
        warmup_rate = peak * step / tf.maximum(warmup_steps, 1.0)
        decay_steps = tf.maximum(total_steps - warmup_steps, 1.0)
        progress = tf.clip_by_value((step - warmup_steps) / decay_steps, 0.0, 1.0)
        if self.decay == "linear":
            decayed = peak * (1.0 - progress)
        elif self.decay == "cosine":
            decayed = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            decayed = peak
        return tf.where(step < warmup_steps, warmup_rate, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
        }


def create_optimizer(config, total_steps, schedule=None):
    """Return AdamW with the config's schedule, weight decay and gradient clipping.

    ``schedule`` replaces the learning-rate schedule built from the config.
    """
    schedule = schedule or WarmupDecaySchedule(
        config.learning_rate,
        total_steps,
        warmup_steps=int(math.ceil(config.warmup_ratio * total_steps)),
        decay=config.lr_scheduler_type,
    )
    optimizer = tf_keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=config.weight_decay,
        epsilon=1e-8,
        global_clipnorm=config.max_grad_norm or None,
    )
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
    return optimizer


def compile_classifier(model, config, total_steps, schedule=None):
    """Compile ``model`` for training; call it again whenever a policy changes ``trainable``."""
    model.compile(
        optimizer=create_optimizer(config, total_steps, schedule),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


@dataclasses.dataclass
class PreparedData:
    """Examples, label ids and token ids of each split, and the label map of the run."""

    label_map: LabelMap
    splits: dict  # split name -> TextExamples, for "train", "validation", "test" where present
    label_ids: dict  # split name -> list of int
    encoded: dict  # split name -> EncodedTexts
    length_summaries: dict = dataclasses.field(default_factory=dict)  # split name -> length_summary

    @property
    def token_type_ids(self):
        """True when the texts are sentence pairs encoded with segment ids."""
        return any(encoded.token_type_ids is not None for encoded in self.encoded.values())

    def dataset(self, split, batch_size, *, shuffle=False, seed=None, with_labels=True, bucket_by_length=False):
        """Return the tf.data pipeline of ``split``."""
        labels = self.label_ids[split] if with_labels else None
        return make_dataset(
            self.encoded[split], labels, batch_size=batch_size, shuffle=shuffle, seed=seed,
            bucket_by_length=bucket_by_length,
        )

    def num_batches(self, split, batch_size, *, bucket_by_length=False):
        """Return the batches in one pass of ``dataset(split, ...)`` with the same settings."""
        lengths = self.encoded[split].lengths
        return count_batches(lengths, batch_size, length_boundaries(lengths) if bucket_by_length else None)


def _limit(examples, max_samples):
    if max_samples is None or len(examples) <= max_samples:
        return examples
    return examples.subset(range(max_samples))


def prepare_data(config, tokenizer, *, label_map=None, splits=None, progress=None):
    """Load, split, label and tokenize the configured data.

    Args:
        config: ``TrainingConfig``.
        tokenizer: the backbone's tokenizer.
        label_map: ``LabelMap`` or None. None builds it from the training labels.
        splits: dict or None. Examples from ``load_splits(config)`` when already read.
        progress: ``Progress`` or None. Shows the tokenizing; None prints nothing.
    """
    splits = dict(splits or load_splits(config))
    splits["train"] = _limit(splits["train"], config.max_train_samples)
    for name in ("validation", "test"):
        if name in splits:
            splits[name] = _limit(splits[name], config.max_eval_samples)

    label_map = label_map or LabelMap.from_labels(splits["train"].labels)
    if label_map.num_labels < 2:
        raise ConfigError(
            f"The training data has only the class {label_map.names}; a classifier needs at least two."
        )
    label_ids = {name: label_map.encode(ex.labels, ex.locations()) for name, ex in splits.items()}
    tokenizing = (progress or Progress(0)).task("Tokenizing", sum(len(ex) for ex in splits.values()), "texts")
    encoded, length_summaries = {}, {}
    for name, ex in splits.items():
        logger.info("%s split: %d examples", name, len(ex))
        encoded[name] = encode_texts_in_chunks(
            tokenizer, ex.texts, config.max_seq_length,
            text_pairs=ex.text_pairs, truncation=config.truncation, task=tokenizing,
        )
        length_summaries[name] = log_truncation(
            f"{name} split", encoded[name].full_lengths, config.max_seq_length, config.truncation
        )
    return PreparedData(label_map, splits, label_ids, encoded, length_summaries)


class EpochEvaluation(tf_keras.callbacks.Callback):
    """Evaluate on the validation split after each epoch and keep the best epoch's weights.

    Adds ``val_loss``, ``val_accuracy``, ``val_macro_f1``, ``val_macro_precision`` and
    ``val_macro_recall`` to the epoch logs, so callbacks after this one (the progress bar,
    TensorBoard, early stopping) see them. The metrics come from scikit-learn over the whole
    validation split. At the end of training the best epoch's trainable weights are put back.

    Args:
        dataset: the validation ``tf.data.Dataset`` (features only).
        label_ids: list of int. The validation labels.
        label_names: list of str.
        metric: str. The metric that picks the best epoch, e.g. ``macro_f1`` or ``loss``.
        checkpoint_path: str or None. Where to save the best weights so far after each
            improvement, with the best epoch and metrics in ``checkpoint_path + ".json"``;
            None keeps them in memory only.
        resume_path: str or None. Where a resumed run reads the best weights of the epochs
            before it; default ``checkpoint_path``.
        completed_epochs: int. The epochs a resumed run restored from its backup; 0 for a new run.
        backbone: ``Backbone`` or None. Names the variables in the checkpoint
            (``tfpeft.checkpoints``); None names them by their layer paths.
    """

    def __init__(
        self,
        dataset,
        label_ids,
        label_names,
        metric="macro_f1",
        checkpoint_path=None,
        *,
        resume_path=None,
        completed_epochs=0,
        backbone=None,
    ):
        super().__init__()
        self.dataset = dataset
        self.label_ids = np.asarray(label_ids)
        self.label_names = label_names
        self.metric = metric
        self.checkpoint_path = checkpoint_path
        self.resume_path = resume_path or checkpoint_path
        self.completed_epochs = completed_epochs
        self.backbone = backbone
        self._checkpoint_state = None
        self.best_value = None
        self.best_epoch = None
        self.best_metrics = None
        self._best_weights = None
        self._last_epoch = completed_epochs or None

    def on_train_begin(self, logs=None):
        if not (self.completed_epochs and self.resume_path):
            return
        from tfpeft.recovery import load_best_checkpoint

        restored = load_best_checkpoint(self.model, self.resume_path, self.completed_epochs, self.backbone)
        if restored is not None:
            state, self._best_weights = restored
            self.best_value = state["best_value"]
            self.best_epoch = state["best_epoch"]
            self.best_metrics = state["best_metrics"]

    def _improved(self, value):
        if self.best_value is None:
            return True
        return value < self.best_value if self.metric == "loss" else value > self.best_value

    def on_epoch_end(self, epoch, logs=None):
        logits = predict_logits(self.model, self.dataset)
        metrics = compute_metrics(self.label_ids, logits.argmax(axis=-1), self.label_names)
        metrics["loss"] = cross_entropy(logits, self.label_ids)
        for key in ("loss", "accuracy", "macro_f1", "macro_precision", "macro_recall"):
            logs[f"val_{key}"] = metrics[key]

        self._last_epoch = epoch + 1
        if self._improved(metrics[self.metric]):
            self.best_value = metrics[self.metric]
            self.best_epoch = epoch + 1
            self.best_metrics = metrics
            self._best_weights = [variable.numpy() for variable in self.model.trainable_variables]
            if self.checkpoint_path:
                from tfpeft.checkpoints import TrainableState
                from tfpeft.recovery import save_best_checkpoint

                state = {"best_epoch": self.best_epoch, "best_value": self.best_value, "best_metrics": metrics}
                # Built once, so the frozen variables are fingerprinted once and not at every save.
                if self._checkpoint_state is None:
                    self._checkpoint_state = TrainableState(self.model, self.backbone)
                save_best_checkpoint(self.model, self.checkpoint_path, state, self.backbone, self._checkpoint_state)

    def on_train_end(self, logs=None):
        if self._best_weights is not None and self.best_epoch != self._last_epoch:
            for variable, value in zip(self.model.trainable_variables, self._best_weights):
                variable.assign(value)
            logger.info("Restored the weights of epoch %d, the best by val_%s", self.best_epoch, self.metric)


def evaluate_model(model, data, split, batch_size, *, callbacks=None):
    """Return ``(metrics, logits)`` of ``model`` on ``split`` of ``PreparedData``."""
    logits = predict_logits(model, data.dataset(split, batch_size, with_labels=False), callbacks=callbacks)
    label_ids = np.asarray(data.label_ids[split])
    metrics = compute_metrics(label_ids, logits.argmax(axis=-1), data.label_map.names)
    metrics["loss"] = cross_entropy(logits, label_ids)
    return metrics, logits


def position_limit(backbone):
    """Return the most tokens the backbone's position embeddings cover, or None without a limit.

    RoBERTa-style models number positions from ``pad_token_id + 1``, so two of their
    ``max_position_embeddings`` rows are never used by a real token.
    """
    config = backbone.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is None:
        return None
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= (config.pad_token_id or 0) + 1
    return int(limit)


def check_sequence_limit(max_seq_length, backbone):
    """Raise ``ConfigError`` when ``max_seq_length`` exceeds the backbone's position limit."""
    limit = position_limit(backbone)
    if limit is not None and max_seq_length > limit:
        raise ConfigError(
            f"max_seq_length={max_seq_length} is more than this {backbone.config.model_type} "
            f"backbone's {limit} positions. Use --max-seq-length {limit} or less."
        )


def library_versions():
    """Return the versions of tfpeft and the stack it runs on."""
    import transformers

    import tfpeft

    return {
        "tfpeft": tfpeft.__version__,
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "transformers": transformers.__version__,
    }


@dataclasses.dataclass
class TrainResult:
    """The result of ``train``: the trained classifier, the run folder and ``results.json``'s data."""

    classifier: object
    output_dir: str
    results: dict


def build_config(config, overrides):
    """Return a ``TrainingConfig`` from a config, a TOML path or None, with ``overrides`` applied."""
    if config is None:
        return TrainingConfig.from_dict({}, **overrides)
    if isinstance(config, (str, os.PathLike)):
        return TrainingConfig.from_toml(os.fspath(config), **overrides)
    if overrides:
        return TrainingConfig.from_dict(config.to_dict(), **overrides)
    return config


def train(config=None, *, train_data=None, validation_data=None, test_data=None, verbose=1, **overrides):
    """Fine-tune a backbone under a freezing policy, evaluate it and save the run folder.

    Every data check runs before the backbone is loaded and before the run folder is created,
    so bad data leaves no folder behind.

    Args:
        config: ``TrainingConfig``, a TOML file path, or None for the defaults.
        train_data, validation_data, test_data: in-memory data in place of ``dataset`` or the
            data files: a pandas DataFrame or a dict of columns (named by ``text_column``,
            ``label_column`` and ``text_pair_column``), a ``(texts, labels)`` or
            ``(texts, text_pairs, labels)`` tuple, or ``TextExamples``. The run folder does
            not keep such data, so ``config.toml`` alone cannot repeat the run.
        verbose: int. 0 prints nothing; 1 prints progress, the parameter report and results.
        **overrides: ``TrainingConfig`` fields that replace the config's values.

    Returns:
        ``TrainResult``.

    Example:

    >>> result = tfpeft.train(dataset="bbc_news", output_dir="runs/bbc", num_train_epochs=2)
    >>> result.results["test"]["accuracy"]
    0.97...
    """
    from tfpeft.precision import precision_policy

    config = build_config(config, overrides)
    with precision_policy(config.mixed_precision):
        return _train(config, train_data, validation_data, test_data, verbose)


def _train(config, train_data, validation_data, test_data, verbose):
    from tfpeft import distributed, recovery
    from tfpeft.backbones import load_backbone
    from tfpeft.model import build_classifier
    from tfpeft.policies import apply_policy, parameter_report
    from tfpeft.reports import write_run_report
    from tfpeft.runs import (
        CONFIG_FILE,
        LABEL_MAP_FILE,
        PREDICTIONS_FILE,
        RESULTS_FILE,
        TextClassifier,
        check_output_dir,
        discard_replaced_run,
        save_model_files,
        write_json,
    )

    progress = Progress(verbose)
    if config.output_dir is None:
        raise ConfigError("output_dir is not set: pass --output-dir (output_dir=...) for the run folder.")
    if config.logging_dir is not None and os.path.exists(config.logging_dir) and not os.path.isdir(config.logging_dir):
        # TensorBoard would fail on it only after the run folder is made and the backbone loaded.
        raise ConfigError(
            f"Invalid logging_dir={config.logging_dir!r} (--logging-dir): it is a file, not a "
            "folder. Pass a folder path, or leave it unset for OUTPUT_DIR/logs."
        )
    # Before any other TensorFlow work, which a multi-worker strategy may break.
    strategy = distributed.create_strategy(config)
    role = distributed.worker_role(strategy)
    num_replicas = strategy.num_replicas_in_sync
    logger.info(distributed.describe_strategy(strategy, role))
    # Only the chief writes the run folder, so only the chief checks it.
    resuming = role.is_chief and check_output_dir(config.output_dir, config.overwrite_output_dir, config)
    tf_keras.utils.set_random_seed(config.seed)

    # Data errors are found before the slower backbone load.
    progress.step("Reading data")
    splits = load_splits(config, train_data=train_data, validation_data=validation_data, test_data=test_data)
    progress.step(f"Loading backbone {config.model_name_or_path}")
    with strategy.scope():
        backbone = load_backbone(config.model_name_or_path)
    check_sequence_limit(config.max_seq_length, backbone)
    data = prepare_data(config, backbone.tokenizer, splits=splits, progress=progress)
    sizes = ", ".join(f"{name} {len(examples)}" for name, examples in data.splits.items())
    progress.step(f"Data: {sizes} examples; classes: {', '.join(data.label_map.names)}")

    train_batch_size = config.per_device_train_batch_size * num_replicas
    eval_batch_size = config.per_device_eval_batch_size * num_replicas
    steps_per_epoch = data.num_batches("train", train_batch_size, bucket_by_length=config.bucket_by_length)

    with strategy.scope():
        model = build_classifier(
            backbone,
            data.label_map.num_labels,
            pooling=config.pooling,
            dropout=config.classifier_dropout,
            token_type_ids=data.token_type_ids,
        )
        policy = apply_policy(
            backbone, config.policy, pooling=config.pooling, frozen_dropout=config.frozen_dropout
        )
        compile_classifier(model, config, steps_per_epoch * config.num_train_epochs)
    report = parameter_report(model, backbone)
    progress.block(f"Policy {policy.name}:\n{report.format()}")
    # With a frozen bottom, fit trains a model of the top layers on cached features; it shares
    # its variables with ``model``, which evaluation and saving use as always.
    fit_model, fit_data = model, data
    if config.feature_cache:
        from tfpeft.features import prepare_feature_cache

        progress.step("Computing or loading the frozen part's features")
        with strategy.scope():
            cached = prepare_feature_cache(model, backbone, policy, data, config, progress=progress)
            if cached is not None:
                fit_model, fit_data = cached.model, cached
                compile_classifier(fit_model, config, steps_per_epoch * config.num_train_epochs)
    else:
        logger.info("Feature cache off: feature_cache=False (--no-feature-cache)")

    resume_state = recovery.prepare_run_folder(config, resuming, strategy, role)
    shared_dir = config.output_dir
    config, scratch = distributed.redirect_worker_output(config, role)
    os.makedirs(config.output_dir, exist_ok=True)
    config.to_toml(os.path.join(config.output_dir, CONFIG_FILE))
    data.label_map.save(os.path.join(config.output_dir, LABEL_MAP_FILE))

    num_labels = data.label_map.num_labels
    class_weight = None
    if config.class_weight == "balanced":
        class_weight = balanced_class_weights(data.label_ids["train"], num_labels)
    log_class_counts(data.splits["train"], data.label_map, data.label_ids["train"], class_weight)

    # Every worker shuffles with the same seed, so the workers' parts of a global batch fit.
    # NOTE: a resumed run starts the shuffle sequence again at the first epoch's order.
    batching = dict(shuffle=True, seed=config.seed, bucket_by_length=config.bucket_by_length)
    logger.info(
        "Training batches: %.1f%% of token positions are padding (%s)",
        100 * padding_share(data.dataset("train", train_batch_size, **batching)),
        "bucketed by length" if config.bucket_by_length else "padded per batch",
    )
    train_dataset = distributed.shard_by_data(fit_data.dataset("train", train_batch_size, **batching))
    callbacks, evaluation, epoch_log = _callbacks(
        config, fit_data, eval_batch_size, progress,
        shared_dir=shared_dir, resume_state=resume_state, num_replicas=num_replicas, backbone=backbone,
    )
    first_epoch = resume_state.completed_epochs + 1 if resume_state else 1
    if resume_state:
        progress.step(
            f"Resuming from the backup in {recovery.backup_dir(shared_dir)}: "
            f"{resume_state.completed_epochs} of {config.num_train_epochs} epochs done"
        )
    if first_epoch <= config.num_train_epochs:
        progress.step(
            f"Training epochs {first_epoch} to {config.num_train_epochs}, {steps_per_epoch} steps "
            f"each, global batch {train_batch_size}"
        )
    start = time.monotonic()
    with distributed.report_worker_failures(role, config.collective_timeout):
        fit_model.fit(
            train_dataset,
            epochs=config.num_train_epochs,
            callbacks=callbacks,
            verbose=progress.keras_verbose,
            class_weight=class_weight,
        )
    train_seconds = time.monotonic() - start
    if fit_model is not model:
        # The optimizer that trained the shared variables, with its step count and moments.
        model.optimizer = fit_model.optimizer
    epochs_completed = len(epoch_log.epoch_logs)

    results = {
        "policy": policy.name,
        **report.to_dict(),
        "epochs_completed": epochs_completed,
        "best_epoch": evaluation.best_epoch if evaluation else epochs_completed,
        "train_seconds": round(train_seconds, 3),
        "history": epoch_log.history,
        "validation": _without_loss_key(evaluation.best_metrics) if evaluation else None,
        "test": None,
        "num_examples": {name: len(examples) for name, examples in data.splits.items()},
        "train_data_sha256": data.splits["train"].fingerprint(),
        "class_counts": dict(zip(data.label_map.names, class_counts(data.label_ids["train"], num_labels))),
        "class_weight": (
            {data.label_map.names[i]: weight for i, weight in class_weight.items()} if class_weight else None
        ),
        "sequence_lengths": data.length_summaries,
        "strategy": distributed.strategy_name(strategy),
        "num_replicas": num_replicas,
        "versions": library_versions(),
    }
    if "test" in data.splits:
        progress.step("Evaluating on the test split")
        metrics, logits = evaluate_model(
            model, data, "test", eval_batch_size, callbacks=[progress.predict_callback("Predicting the test split")]
        )
        results["test"] = _without_loss_key(metrics)
        results["test"]["loss"] = metrics["loss"]
        write_predictions(
            os.path.join(config.output_dir, PREDICTIONS_FILE),
            data.splits["test"].texts,
            data.label_ids["test"],
            logits,
            data.label_map.names,
            text_pairs=data.splits["test"].text_pairs,
        )
        progress.block(format_metrics(metrics))

    save_model_files(
        config.output_dir,
        model,
        backbone,
        {
            "backbone": backbone.source,
            "model_type": backbone.config.model_type,
            "pooling": config.pooling,
            "classifier_dropout": config.classifier_dropout,
            "policy": policy.name,
            "frozen_dropout": config.frozen_dropout,
            "num_labels": data.label_map.num_labels,
            "token_type_ids": data.token_type_ids,
        },
        label_names=data.label_map.names,
    )
    write_json(os.path.join(config.output_dir, RESULTS_FILE), results)
    if role.is_chief:
        write_run_report(config.output_dir)
        recovery.remove_backup(shared_dir)
        discard_replaced_run(shared_dir)
        progress.step(f"Run saved to {config.output_dir}; see report.md there")
    if scratch is not None:
        scratch.cleanup()
    classifier = TextClassifier(model, backbone, data.label_map, config, policy)
    return TrainResult(classifier, shared_dir, results)


def _without_loss_key(metrics):
    return {key: value for key, value in metrics.items() if key != "loss"} if metrics else None


def _callbacks(
    config, data, eval_batch_size, progress, *, shared_dir=None, resume_state=None, num_replicas=1, backbone=None
):
    """Return the fit callbacks, the ``EpochEvaluation`` (or None) and the ``EpochLog``.

    The validation comes first so later callbacks see its metrics, and the backup comes last
    so that it follows every other write of an epoch. A resumed run reads ``shared_dir``, the
    run folder that the chief writes. This process writes to ``config.output_dir``, which is
    the same folder on the chief.
    """
    from tfpeft.recovery import BACKUP_DIR, EPOCH_LOG_FILE, EpochLog, ResumableEarlyStopping, RunBackup

    shared_dir = shared_dir or config.output_dir
    completed_epochs = resume_state.completed_epochs if resume_state else 0
    past_logs = resume_state.epoch_logs if resume_state else []
    callbacks = []
    evaluation = None
    if config.eval_strategy == "epoch" and "validation" in data.splits:
        # With save_strategy='no' the best weights go into the backup, which is removed at the end.
        checkpoint_dir = "checkpoints" if config.save_strategy == "epoch" else BACKUP_DIR
        evaluation = EpochEvaluation(
            data.dataset("validation", eval_batch_size, with_labels=False),
            data.label_ids["validation"],
            data.label_map.names,
            metric=config.best_metric,
            checkpoint_path=os.path.join(config.output_dir, checkpoint_dir, "best"),
            resume_path=os.path.join(shared_dir, checkpoint_dir, "best"),
            completed_epochs=completed_epochs,
            backbone=backbone,
        )
        callbacks.append(evaluation)
    elif config.eval_strategy == "epoch":
        logger.warning("eval_strategy='epoch' but there is no validation split; the last epoch is kept")

    # Listed after the evaluation so that it prints the validation metrics too.
    callbacks.append(progress.fit_callback())
    logging_dir = config.logging_dir or os.path.join(config.output_dir, "logs")
    callbacks.append(tf_keras.callbacks.TensorBoard(log_dir=logging_dir, write_graph=False))
    if config.early_stopping_patience is not None and evaluation is not None:
        callbacks.append(
            ResumableEarlyStopping(
                monitor=f"val_{config.best_metric}",
                mode="max" if config.greater_is_better else "min",
                patience=config.early_stopping_patience,
                past_logs=past_logs,
            )
        )
    epoch_log = EpochLog(os.path.join(config.output_dir, BACKUP_DIR, EPOCH_LOG_FILE), past_logs, num_replicas)
    callbacks.append(epoch_log)
    callbacks.append(RunBackup(shared_dir, backbone))
    return callbacks, evaluation, epoch_log
