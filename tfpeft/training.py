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
from tfpeft.data import LabelMap, encode_texts, load_builtin, make_dataset, read_file, split_examples
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

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak_learning_rate, tf.float32)
        warmup = float(max(self.warmup_steps, 1))
        warmup_rate = peak * step / warmup
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.decay == "linear":
            decayed = peak * (1.0 - progress)
        elif self.decay == "cosine":
            decayed = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            decayed = peak
        return tf.where(step < self.warmup_steps, warmup_rate, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "decay": self.decay,
        }


def create_optimizer(config, total_steps):
    """Return AdamW with the config's schedule, weight decay and gradient clipping."""
    schedule = WarmupDecaySchedule(
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


def compile_classifier(model, config, total_steps):
    """Compile ``model`` for training; call it again whenever a policy changes ``trainable``."""
    model.compile(
        optimizer=create_optimizer(config, total_steps),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def select_strategy():
    """Return ``MirroredStrategy`` on a machine with several GPUs, else the default strategy."""
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@dataclasses.dataclass
class PreparedData:
    """Examples, label ids and token ids of each split, and the label map of the run."""

    label_map: LabelMap
    splits: dict  # split name -> TextExamples, for "train", "validation", "test" where present
    label_ids: dict  # split name -> list of int
    encoded: dict  # split name -> EncodedTexts

    def dataset(self, split, batch_size, *, shuffle=False, seed=None, with_labels=True):
        """Return the tf.data pipeline of ``split``."""
        labels = self.label_ids[split] if with_labels else None
        return make_dataset(self.encoded[split], labels, batch_size=batch_size, shuffle=shuffle, seed=seed)


def load_splits(config):
    """Read the configured data and return ``{"train", "validation", "test"}`` examples.

    Explicit validation and test files take the place of their split; what is missing is split
    from the training data, stratified and seeded.
    """
    if config.dataset is not None:
        examples = load_builtin(config.dataset)
    elif config.train_file is not None:
        examples = _read_data_file(config, config.train_file)
    else:
        raise ConfigError(
            "No training data: pass --dataset bbc_news (or tweets), or --train-file with a "
            "CSV or JSON Lines file."
        )

    explicit = {
        "validation": config.validation_file and _read_data_file(config, config.validation_file),
        "test": config.test_file and _read_data_file(config, config.test_file),
    }
    fractions = {
        "validation": 0.0 if explicit["validation"] else config.validation_fraction,
        "test": 0.0 if explicit["test"] else config.test_fraction,
    }
    if fractions["validation"] or fractions["test"]:
        split = split_examples(
            examples,
            validation_fraction=fractions["validation"],
            test_fraction=fractions["test"],
            seed=config.seed,
        )
        splits = {"train": split.train, "validation": split.validation, "test": split.test}
    else:
        splits = {"train": examples, "validation": None, "test": None}
    for name, given in explicit.items():
        if given:
            splits[name] = given
    return {name: examples for name, examples in splits.items() if examples is not None}


def _read_data_file(config, path):
    return read_file(
        path, text_column=config.text_column, label_column=config.label_column, encoding=config.encoding
    )


def _limit(examples, max_samples):
    if max_samples is None or len(examples) <= max_samples:
        return examples
    return examples.subset(range(max_samples))


def prepare_data(config, tokenizer, *, label_map=None, splits=None):
    """Load, split, label and tokenize the configured data.

    Args:
        config: ``TrainingConfig``.
        tokenizer: the backbone's tokenizer.
        label_map: ``LabelMap`` or None. None builds it from the training labels.
        splits: dict or None. Examples from ``load_splits(config)`` when already read.
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
    label_ids = {name: label_map.encode(ex.labels, ex.rows) for name, ex in splits.items()}
    encoded = {
        name: encode_texts(tokenizer, ex.texts, config.max_seq_length) for name, ex in splits.items()
    }
    for name, ex in splits.items():
        logger.info("%s split: %d examples", name, len(ex))
    return PreparedData(label_map, splits, label_ids, encoded)


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
            improvement; None keeps them in memory only.
    """

    def __init__(self, dataset, label_ids, label_names, metric="macro_f1", checkpoint_path=None):
        super().__init__()
        self.dataset = dataset
        self.label_ids = np.asarray(label_ids)
        self.label_names = label_names
        self.metric = metric
        self.checkpoint_path = checkpoint_path
        self.best_value = None
        self.best_epoch = None
        self.best_metrics = None
        self._best_weights = None
        self._last_epoch = None

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
                from tfpeft.runs import save_weights

                save_weights(self.model, self.checkpoint_path)

    def on_train_end(self, logs=None):
        if self._best_weights is not None and self.best_epoch != self._last_epoch:
            for variable, value in zip(self.model.trainable_variables, self._best_weights):
                variable.assign(value)
            logger.info("Restored the weights of epoch %d, the best by val_%s", self.best_epoch, self.metric)


def evaluate_model(model, data, split, batch_size):
    """Return ``(metrics, logits)`` of ``model`` on ``split`` of ``PreparedData``."""
    logits = predict_logits(model, data.dataset(split, batch_size, with_labels=False))
    label_ids = np.asarray(data.label_ids[split])
    metrics = compute_metrics(label_ids, logits.argmax(axis=-1), data.label_map.names)
    metrics["loss"] = cross_entropy(logits, label_ids)
    return metrics, logits


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


def _build_config(config, overrides):
    if config is None:
        return TrainingConfig.from_dict({}, **overrides)
    if isinstance(config, (str, os.PathLike)):
        return TrainingConfig.from_toml(os.fspath(config), **overrides)
    if overrides:
        return TrainingConfig.from_dict(config.to_dict(), **overrides)
    return config


def train(config=None, *, verbose=1, **overrides):
    """Fine-tune a backbone under a freezing policy, evaluate it and save the run folder.

    Args:
        config: ``TrainingConfig``, a TOML file path, or None for the defaults.
        verbose: int. 0 prints nothing; 1 prints progress, the parameter report and results.
        **overrides: ``TrainingConfig`` fields that replace the config's values.

    Returns:
        ``TrainResult``.

    Example:

    >>> result = tfpeft.train(dataset="bbc_news", output_dir="runs/bbc", num_train_epochs=2)
    >>> result.results["test"]["accuracy"]
    0.97...
    """
    from tfpeft.backbones import load_backbone
    from tfpeft.model import build_classifier
    from tfpeft.policies import apply_policy, parameter_report
    from tfpeft.runs import (
        CONFIG_FILE,
        LABEL_MAP_FILE,
        PREDICTIONS_FILE,
        RESULTS_FILE,
        TextClassifier,
        check_output_dir,
        prepare_output_dir,
        save_model_files,
        write_json,
    )

    config = _build_config(config, overrides)
    progress = Progress(verbose)
    if config.output_dir is None:
        raise ConfigError("output_dir is not set: pass --output-dir (output_dir=...) for the run folder.")
    check_output_dir(config.output_dir, config.overwrite_output_dir)
    tf_keras.utils.set_random_seed(config.seed)

    # Data errors are found before the slower backbone load.
    progress.step("Reading data")
    splits = load_splits(config)
    progress.step(f"Loading backbone {config.model_name_or_path}")
    backbone = load_backbone(config.model_name_or_path)
    progress.step("Tokenizing")
    data = prepare_data(config, backbone.tokenizer, splits=splits)
    sizes = ", ".join(f"{name} {len(examples)}" for name, examples in data.splits.items())
    progress.step(f"Data: {sizes} examples; classes: {', '.join(data.label_map.names)}")

    strategy = select_strategy()
    num_replicas = strategy.num_replicas_in_sync
    logger.info("Strategy %s with %d replicas", type(strategy).__name__, num_replicas)
    train_batch_size = config.per_device_train_batch_size * num_replicas
    eval_batch_size = config.per_device_eval_batch_size * num_replicas
    steps_per_epoch = math.ceil(len(data.splits["train"]) / train_batch_size)

    with strategy.scope():
        model = build_classifier(
            backbone,
            data.label_map.num_labels,
            pooling=config.pooling,
            dropout=config.classifier_dropout,
        )
        policy = apply_policy(
            backbone, config.policy, pooling=config.pooling, frozen_dropout=config.frozen_dropout
        )
        compile_classifier(model, config, steps_per_epoch * config.num_train_epochs)
    report = parameter_report(model, backbone)
    progress.block(f"Policy {policy.name}:\n{report.format()}")

    prepare_output_dir(config.output_dir, config.overwrite_output_dir)
    config.to_toml(os.path.join(config.output_dir, CONFIG_FILE))
    data.label_map.save(os.path.join(config.output_dir, LABEL_MAP_FILE))

    train_dataset = data.dataset("train", train_batch_size, shuffle=True, seed=config.seed)
    callbacks, evaluation = _callbacks(config, data, eval_batch_size)
    progress.step(f"Training {config.num_train_epochs} epochs of {steps_per_epoch} steps")
    start = time.monotonic()
    history = model.fit(
        train_dataset,
        epochs=config.num_train_epochs,
        callbacks=callbacks,
        verbose=progress.keras_verbose,
    )
    train_seconds = time.monotonic() - start
    epochs_completed = len(history.epoch)

    results = {
        "policy": policy.name,
        **report.to_dict(),
        "epochs_completed": epochs_completed,
        "best_epoch": evaluation.best_epoch if evaluation else epochs_completed,
        "train_seconds": round(train_seconds, 3),
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "validation": _without_loss_key(evaluation.best_metrics) if evaluation else None,
        "test": None,
        "num_examples": {name: len(examples) for name, examples in data.splits.items()},
        "train_data_sha256": data.splits["train"].fingerprint(),
        "strategy": type(strategy).__name__,
        "num_replicas": num_replicas,
        "versions": library_versions(),
    }
    if "test" in data.splits:
        progress.step("Evaluating on the test split")
        metrics, logits = evaluate_model(model, data, "test", eval_batch_size)
        results["test"] = _without_loss_key(metrics)
        results["test"]["loss"] = metrics["loss"]
        write_predictions(
            os.path.join(config.output_dir, PREDICTIONS_FILE),
            data.splits["test"].texts,
            data.label_ids["test"],
            logits,
            data.label_map.names,
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
        },
    )
    write_json(os.path.join(config.output_dir, RESULTS_FILE), results)
    progress.step(f"Run saved to {config.output_dir}")
    classifier = TextClassifier(model, backbone, data.label_map, config, policy)
    return TrainResult(classifier, config.output_dir, results)


def _without_loss_key(metrics):
    return {key: value for key, value in metrics.items() if key != "loss"} if metrics else None


def _callbacks(config, data, eval_batch_size):
    """Return the fit callbacks, validation first so later ones see its metrics."""
    callbacks = []
    evaluation = None
    if config.eval_strategy == "epoch" and "validation" in data.splits:
        checkpoint_path = None
        if config.save_strategy == "epoch":
            checkpoint_path = os.path.join(config.output_dir, "checkpoints", "best")
        evaluation = EpochEvaluation(
            data.dataset("validation", eval_batch_size, with_labels=False),
            data.label_ids["validation"],
            data.label_map.names,
            metric=config.best_metric,
            checkpoint_path=checkpoint_path,
        )
        callbacks.append(evaluation)
    elif config.eval_strategy == "epoch":
        logger.warning("eval_strategy='epoch' but there is no validation split; the last epoch is kept")

    # Listed after the evaluation so that it prints the validation metrics too.
    callbacks.append(tf_keras.callbacks.ProgbarLogger(count_mode="steps"))
    logging_dir = config.logging_dir or os.path.join(config.output_dir, "logs")
    callbacks.append(tf_keras.callbacks.TensorBoard(log_dir=logging_dir, write_graph=False))
    if config.early_stopping_patience is not None and evaluation is not None:
        callbacks.append(
            tf_keras.callbacks.EarlyStopping(
                monitor=f"val_{config.best_metric}",
                mode="max" if config.greater_is_better else "min",
                patience=config.early_stopping_patience,
            )
        )
    return callbacks, evaluation
