"""Resuming an unfinished run from its backup.

After every epoch a run backs up its trainable variables, their optimizer state and the
epoch counter under ``OUTPUT_DIR/backup`` with tf_keras' ``BackupAndRestore``, and logs the epoch's metrics in
``OUTPUT_DIR/backup/epochs.json``. Re-running the same command on that folder restores them
and trains only the remaining epochs. The backup is removed once the run folder is complete.

Layout::

    OUTPUT_DIR/backup/
      chief/         the latest training-state checkpoint, written by the chief: trainable
                     variables, their optimizer state and the epoch (tfpeft.checkpoints)
      epochs.json    metrics of every finished epoch, and the replicas that trained them
"""

import dataclasses
import json
import logging
import os
import shutil

import numpy as np
import tensorflow as tf
import tf_keras
from tf_keras.src.distribute import worker_training_state

from tfpeft.checkpoints import ROOT, TrainableState, check_fingerprint, read_trainable, save_trainable
from tfpeft.errors import ConfigError, OutputDirError, RunFolderError

logger = logging.getLogger("tfpeft.recovery")

BACKUP_DIR = "backup"
EPOCH_LOG_FILE = "epochs.json"
# BackupAndRestore keeps the chief's training state in this subfolder of the backup folder.
_STATE_SUBDIR = "chief"
_SAVED_EPOCH_KEY = "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"

# Settings that leave what a run computes unchanged, so a resumed run may set them
# differently. A change of strategy is allowed because the replica count, which is what
# changes the global batch, is checked on its own. The feature cache gives the same weights up
# to float rounding, and checkpoints name variables by stable name, so they restore either way.
RESULT_NEUTRAL_FIELDS = frozenset(
    {
        "feature_cache",
        "output_dir",
        "overwrite_output_dir",
        "logging_dir",
        "strategy",
        "collective_timeout",
        "tpu_name",
        "tpu_zone",
        "gcp_project",
    }
)


def backup_dir(output_dir):
    return os.path.join(output_dir, BACKUP_DIR)


def completed_epochs(output_dir):
    """Return the number of epochs in the backup in ``output_dir``; 0 without a backup."""
    checkpoint = tf.train.latest_checkpoint(os.path.join(backup_dir(output_dir), _STATE_SUBDIR))
    if checkpoint is None:
        return 0
    try:
        # BackupAndRestore stores the 0-based index of the last finished epoch.
        return int(tf.train.load_variable(checkpoint, _SAVED_EPOCH_KEY)) + 1
    except (tf.errors.OpError, ValueError) as error:
        message = error.message if isinstance(error, tf.errors.OpError) else str(error)
        raise RunFolderError(
            f"The backup {checkpoint} of the unfinished run in {output_dir!r} cannot be read "
            f"({message.splitlines()[0]}), so the run cannot resume. Restore the folder from a copy, "
            "or start the run again with --overwrite-output-dir (its finished epochs are lost)."
        ) from None


def first_difference(saved, config):
    """Return ``(name, saved_value, value)`` of the first setting that changes the result, or None."""
    for field in dataclasses.fields(config):
        if field.name in RESULT_NEUTRAL_FIELDS:
            continue
        before, now = getattr(saved, field.name), getattr(config, field.name)
        if before != now:
            return field.name, before, now
    return None


def check_same_config(path, config_file, config):
    """Raise ``OutputDirError`` unless the unfinished run in ``path`` has ``config``'s settings."""
    from tfpeft.config import TrainingConfig

    try:
        saved = TrainingConfig.from_toml(config_file)
    except ConfigError as error:
        raise OutputDirError(
            f"output_dir {path!r} contains an unfinished run whose {os.path.basename(config_file)} "
            f"cannot be read ({error}), so it cannot be resumed. Choose a new folder, or pass "
            "--overwrite-output-dir to replace it."
        ) from error
    difference = first_difference(saved, config)
    if difference is not None:
        name, before, now = difference
        raise OutputDirError(
            f"output_dir {path!r} contains an unfinished run with a different config: {name} is "
            f"{before!r} there and {now!r} now. Re-run with the same settings to resume it, "
            "choose a new folder, or pass --overwrite-output-dir to replace it."
        )


@dataclasses.dataclass
class ResumeState:
    """What an unfinished run left in its backup.

    Args:
        completed_epochs: int. Epochs whose training state the backup contains.
        epoch_logs: list of dict. Metrics of those epochs, oldest first.
        num_replicas: int or None. The replicas that trained them.
    """

    completed_epochs: int
    epoch_logs: list
    num_replicas: int = None


def read_resume_state(output_dir):
    """Return the ``ResumeState`` of the backup in ``output_dir``, or None without one."""
    epochs = completed_epochs(output_dir)
    if not epochs:
        return None
    log_path = os.path.join(backup_dir(output_dir), EPOCH_LOG_FILE)
    try:
        with open(log_path, encoding="utf-8") as file:
            saved = json.load(file)
    except FileNotFoundError:
        saved = {}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        logger.warning("Ignoring the damaged epoch log %s (%s)", log_path, error)
        saved = {}
    # The log is written before the backup at each epoch end, so it may hold one epoch more
    # than the backup when the process stopped between the two writes.
    epoch_logs = saved.get("epochs", [])[:epochs]
    if len(epoch_logs) < epochs:
        logger.warning(
            "%s has metrics of %d epochs but the backup contains %d, so the history in "
            "results.json will lack the others",
            log_path,
            len(epoch_logs),
            epochs,
        )
    return ResumeState(epochs, epoch_logs, saved.get("num_replicas"))


def check_replicas(state, num_replicas, per_device_batch_size):
    """Raise ``ConfigError`` when the backup was trained with another global batch size."""
    if state.num_replicas is None or state.num_replicas == num_replicas:
        return
    raise ConfigError(
        f"The unfinished run trained with {state.num_replicas} replicas (global batch "
        f"{per_device_batch_size * state.num_replicas}), but this strategy has {num_replicas} "
        f"(global batch {per_device_batch_size * num_replicas}). Resume it on as many devices, "
        "or start a new run."
    )


def remove_backup(output_dir):
    """Delete the backup folder of a finished run."""
    shutil.rmtree(backup_dir(output_dir), ignore_errors=True)


class RunBackup(tf_keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` after every epoch, of what trains only, kept until the run folder is complete.

    The backup contains the trainable variables, their optimizer state and the epoch counter,
    keyed by stable names (``tfpeft.checkpoints``), not the frozen weights, which a resumed run
    loads again with its backbone. It is not deleted when ``fit`` ends, so that a process
    stopped while it evaluates the test split or writes the run folder resumes without
    training again. The preemption checkpoint of ``save_before_preemption`` stays off: it
    probes a cloud metadata server.

    Args:
        output_dir: str. The run folder; the backup goes to ``OUTPUT_DIR/backup``.
        backbone: ``Backbone`` or None. Names the backbone's variables in the backup and
            fingerprints its frozen ones; None names every variable by its layer path.
    """

    def __init__(self, output_dir, backbone=None):
        super().__init__(backup_dir(output_dir), save_freq="epoch", delete_checkpoint=False)
        # tf_keras 2.21 lists only the strategies that span several devices, but the training
        # state it saves and restores works the same under OneDeviceStrategy.
        self._supported_strategies += (tf.distribute.OneDeviceStrategy,)
        self.backbone = backbone

    def on_train_begin(self, logs=None):
        # The steps of BackupAndRestore.on_train_begin, with a training state of what trains.
        strategy = self.model.distribute_strategy
        if self.model._distribution_strategy and not isinstance(strategy, self._supported_strategies):
            raise NotImplementedError(f"{type(strategy).__name__} is not supported by BackupAndRestore.")
        self.model._training_state = _TrainableTrainingState(self.model, self.backup_dir, self.backbone)
        self._training_state = self.model._training_state
        self._training_state.restore()


class _TrainableTrainingState(worker_training_state.WorkerTrainingState):
    """tf_keras' training state whose checkpoint tracks ``TrainableState`` in place of the model."""

    def __init__(self, model, checkpoint_dir, backbone):
        super().__init__(model, checkpoint_dir, "epoch")
        self.state = TrainableState(model, backbone, model.optimizer)
        checkpoint = tf.train.Checkpoint(
            trainable=self.state,
            ckpt_saved_epoch=self._ckpt_saved_epoch,
            ckpt_saved_batch=self._ckpt_saved_batch,
            train_counter=model._train_counter,
        )
        # The same folders as the parent's managers: the chief's, and a temporary one for the
        # other workers, which must save too but whose copy is thrown away.
        read_dir = self.read_checkpoint_manager.directory
        write_dir = self.write_checkpoint_manager.directory
        self.read_checkpoint_manager = tf.train.CheckpointManager(checkpoint, read_dir, max_to_keep=1)
        self.write_checkpoint_manager = (
            self.read_checkpoint_manager
            if write_dir == read_dir
            else tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=1)
        )

    def restore(self):
        path = self.read_checkpoint_manager.latest_checkpoint
        if path is None:
            return
        if not any(key.startswith(ROOT + "/") for key, _ in tf.train.list_variables(path)):
            raise RunFolderError(
                f"The backup {path} contains the whole model, as earlier tfpeft versions wrote it, "
                "and cannot be resumed by this version. Start the run again with "
                "--overwrite-output-dir, or finish it with the version that started it."
            )
        status = self.read_checkpoint_manager.checkpoint.restore(path)
        try:
            status.assert_existing_objects_matched()
        except AssertionError as error:
            raise RunFolderError(
                f"The backup {path} does not fit this model ({error}); it was written for another "
                "policy or backbone. Start the run again with --overwrite-output-dir."
            ) from error
        check_fingerprint(self.state, path)


class EpochLog(tf_keras.callbacks.Callback):
    """Keep every epoch's metrics, including those of a run before it was resumed.

    Keras' own ``History`` starts empty in a resumed process. This log starts with the epochs
    of the backup and writes itself to ``OUTPUT_DIR/backup/epochs.json`` after each epoch.
    List it after the callbacks that add metrics to the epoch logs.

    Args:
        path: str or None. The file to write; None keeps the log in memory (workers other
            than the chief).
        past_logs: list of dict. Metrics of the epochs restored from the backup.
        num_replicas: int. The replicas that train, recorded to check a later resume.
    """

    def __init__(self, path, past_logs=(), num_replicas=1):
        super().__init__()
        self.path = path
        self.epoch_logs = [dict(logs) for logs in past_logs]
        self.num_replicas = num_replicas

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_logs.append({key: float(value) for key, value in (logs or {}).items()})
        if self.path:
            _write_json_atomically(self.path, {"num_replicas": self.num_replicas, "epochs": self.epoch_logs})

    @property
    def history(self):
        """Each metric's values, one per epoch, as in ``History.history``."""
        keys = []
        for logs in self.epoch_logs:
            keys += [key for key in logs if key not in keys]
        return {key: [logs.get(key, float("nan")) for logs in self.epoch_logs] for key in keys}


class ResumableEarlyStopping(tf_keras.callbacks.EarlyStopping):
    """``EarlyStopping`` that counts patience across a resume from the restored epochs' metrics.

    NOTE: a run that early stopping ended, killed before its run folder was complete, trains
    one more epoch when resumed, because the stop decision itself is not backed up.
    """

    def __init__(self, *args, past_logs=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.past_logs = list(past_logs)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        # The same bookkeeping as EarlyStopping.on_epoch_end, without stopping.
        for epoch, epoch_logs in enumerate(self.past_logs):
            current = epoch_logs.get(self.monitor)
            if current is None or epoch < self.start_from_epoch:
                continue
            self.wait += 1
            if self._is_improvement(current, self.best):
                self.best = current
                self.best_epoch = epoch
                if self.baseline is None or self._is_improvement(current, self.baseline):
                    self.wait = 0


def save_best_checkpoint(model, path, state, backbone=None, checkpoint_state=None):
    """Write the model's trainable weights to ``path`` and ``state`` (best epoch and metrics) beside it.

    The checkpoint contains only what trains (``tfpeft.checkpoints.save_trainable``, which
    reuses ``checkpoint_state`` where given). ``state``
    goes to ``path + ".json"`` with a hash of the checkpoint's index, so that
    ``load_best_checkpoint`` can tell whether the two files belong together.
    """
    save_trainable(model, path, backbone, checkpoint_state)
    _write_json_atomically(f"{path}.json", {**state, "checkpoint_sha256": _index_sha256(path)})


def load_best_checkpoint(model, path, completed_epochs, backbone=None):
    """Return ``(state, trainable_values)`` saved by ``save_best_checkpoint``, or None.

    Returns None, with a warning, when the state is missing, belongs to an epoch after the
    ``completed_epochs`` in the backup, or does not match the checkpoint: the process
    stopped between writing one and the other. The model's own weights are left unchanged.
    """
    try:
        with open(f"{path}.json", encoding="utf-8") as file:
            state = json.load(file)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        state, problem = None, f"its record {path}.json is damaged ({error})"
    else:
        problem = None
        if state.get("best_epoch", completed_epochs + 1) > completed_epochs:
            problem = f"it was written after the last backup (epoch {completed_epochs})"
        elif state.get("checkpoint_sha256") != _index_sha256(path):
            problem = f"it does not match its record {path}.json: the run stopped while writing it, or the file is damaged"
    if problem:
        logger.warning(
            "Not using the best-weights checkpoint %s: %s. The best epoch is chosen again from epoch %d on",
            path, problem, completed_epochs + 1,
        )
        return None
    return state, read_trainable(model, path, backbone)


def _index_sha256(checkpoint_path):
    import hashlib

    try:
        with open(f"{checkpoint_path}.index", "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()
    except FileNotFoundError:
        return None


def _write_json_atomically(path, data):
    """Write ``data`` so that a reader finds the old file or the new one, never half of one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, default=_json_default)
        file.write("\n")
    os.replace(temporary, path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def prepare_run_folder(config, resuming, strategy, role):
    """Prepare ``config.output_dir`` and return the ``ResumeState`` to start from, or None.

    The chief creates the folder of a new run, replacing an earlier run where
    ``overwrite_output_dir`` is set, or reads the backup of the run it resumes. An unfinished
    run without a backup stopped during its first epoch, so it starts over. Then every worker
    learns from the chief how many epochs the backup contains and reads the backup itself.
    That exchange is a collective operation, so no worker reads the folder before the chief
    has prepared it.

    Args:
        config: ``TrainingConfig``.
        resuming: bool. What ``check_output_dir`` returned on the chief.
        strategy: the ``tf.distribute.Strategy`` of the run.
        role: ``WorkerRole`` of this process.
    """
    from tfpeft.distributed import agree_with_chief
    from tfpeft.runs import prepare_output_dir

    output_dir = config.output_dir
    state = None
    if role.is_chief:
        state = read_resume_state(output_dir) if resuming else None
        if state is None:
            if resuming:
                logger.info("%s contains an unfinished run without a backup; starting it again", output_dir)
            prepare_output_dir(output_dir, config.overwrite_output_dir or resuming)

    epochs = agree_with_chief(strategy, role, state.completed_epochs if state else 0)
    if not role.is_chief and epochs:
        state = read_resume_state(output_dir)
        found = state.completed_epochs if state else 0
        if found != epochs:
            raise OutputDirError(
                f"The chief resumes after epoch {epochs}, but {role.name} finds a backup of "
                f"{found} epochs in {backup_dir(output_dir)!r}. Every worker must read the same "
                "output_dir: put it on storage that all machines share."
            )
    if state is not None:
        check_replicas(state, strategy.num_replicas_in_sync, config.per_device_train_batch_size)
    return state
