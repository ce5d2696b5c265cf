import json
import logging
import os
import re
import signal

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tfpeft
import tiny
from tfpeft import recovery
from tfpeft.config import TrainingConfig
from tfpeft.errors import OutputDirError, RunFolderError
from tfpeft.runs import check_output_dir
from tfpeft.training import EpochEvaluation
from workers import process_group, read, tfpeft_command, wait_until


def write_run_config(folder, **settings):
    os.makedirs(folder, exist_ok=True)
    config = TrainingConfig(output_dir=str(folder), **settings)
    config.to_toml(os.path.join(folder, "config.toml"))
    return config


# The output folder rule.


def test_unfinished_run_same_config_resumes(tmp_path):
    config = write_run_config(tmp_path, learning_rate=1e-3)
    assert check_output_dir(str(tmp_path), False, config) is True


def test_unfinished_run_neutral_settings_resume(tmp_path):
    write_run_config(tmp_path, learning_rate=1e-3)
    config = TrainingConfig(
        output_dir=str(tmp_path), learning_rate=1e-3, strategy="mirrored", logging_dir="elsewhere", collective_timeout=5,
        feature_cache=False,
    )
    assert check_output_dir(str(tmp_path), False, config) is True


def test_unfinished_run_other_config_rejected(tmp_path):
    write_run_config(tmp_path, learning_rate=1e-3, num_train_epochs=4)
    config = TrainingConfig(output_dir=str(tmp_path), learning_rate=1e-4, num_train_epochs=5)
    message = r"different config: num_train_epochs is 4 there and 5 now\. Re-run with the same settings"
    with pytest.raises(OutputDirError, match=message):
        check_output_dir(str(tmp_path), False, config)


def test_unreadable_config_rejected(tmp_path):
    (tmp_path / "config.toml").write_text("learning_rate = ")
    with pytest.raises(OutputDirError, match="config.toml cannot be read"):
        check_output_dir(str(tmp_path), False, TrainingConfig(output_dir=str(tmp_path)))


def test_finished_run_rejected_unless_overwrite(tmp_path):
    config = write_run_config(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(OutputDirError, match="is not empty .*--overwrite-output-dir"):
        check_output_dir(str(tmp_path), False, config)
    assert check_output_dir(str(tmp_path), True, config) is False


def test_overwrite_replaces_unfinished_run(tmp_path):
    write_run_config(tmp_path, learning_rate=1e-3)
    assert check_output_dir(str(tmp_path), True, TrainingConfig(learning_rate=1e-4)) is False


def test_first_difference_in_field_order():
    saved = TrainingConfig(policy="head", seed=1, output_dir="a")
    assert recovery.first_difference(saved, TrainingConfig(policy="full", seed=2, output_dir="b")) == (
        "policy",
        "head",
        "full",
    )
    assert recovery.first_difference(saved, TrainingConfig(policy="head", seed=1, output_dir="b")) is None


# The epoch log and early stopping across a resume.


def test_epoch_log_keeps_past_epochs(tmp_path):
    path = tmp_path / "backup" / "epochs.json"
    log = recovery.EpochLog(str(path), [{"loss": 1.0, "val_loss": 1.5}], num_replicas=2)
    log.on_epoch_end(1, {"loss": np.float32(0.5), "val_loss": 0.75})
    assert log.history == {"loss": [1.0, 0.5], "val_loss": [1.5, 0.75]}
    assert json.loads(path.read_text()) == {
        "num_replicas": 2,
        "epochs": [{"loss": 1.0, "val_loss": 1.5}, {"loss": 0.5, "val_loss": 0.75}],
    }


def stopped_epoch(callback, values, first_epoch=0):
    callback.set_model(tf_keras.Sequential())
    callback.on_train_begin()
    for epoch in range(first_epoch, len(values)):
        callback.on_epoch_end(epoch, {"val_loss": values[epoch]})
        if callback.model.stop_training:
            return epoch
    return None


def test_early_stopping_counts_patience_across_resume():
    values = [1.0, 0.8, 0.9, 0.95, 0.97, 0.5]
    expected = stopped_epoch(tf_keras.callbacks.EarlyStopping(monitor="val_loss", patience=3), values)
    assert expected == 4
    past = [{"val_loss": value} for value in values[:3]]
    resumed = recovery.ResumableEarlyStopping(monitor="val_loss", patience=3, past_logs=past)
    assert stopped_epoch(resumed, values, first_epoch=3) == expected
    assert resumed.best == 0.8


# The best epoch survives a resume.


class SetWeightsAtEpochEnd(tf_keras.callbacks.Callback):
    """Give the head fixed weights at the end of each epoch, so the validation metrics are known."""

    def __init__(self, weights_by_epoch):
        super().__init__()
        self.weights_by_epoch = weights_by_epoch

    def on_epoch_end(self, epoch, logs=None):
        self.model.set_weights(self.weights_by_epoch[epoch])


def tiny_head_model():
    inputs = tf_keras.Input(shape=(2,))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2, name="head")(inputs))
    model.compile(optimizer=tf_keras.optimizers.SGD(0.0), loss="mse")
    return model


FEATURES = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2], [0.1, 1.0]], dtype=np.float32)
LABELS = [0, 1, 0, 1]
# A head that separates the classes, scaled per epoch: scale 3 has the lowest loss, so epoch 2
# is the best, and epochs 3 and 4 are worse.
SCALES = [1.0, 3.0, 0.5, -1.0]
WEIGHTS_BY_EPOCH = [[np.eye(2, dtype=np.float32) * scale, np.zeros(2, np.float32)] for scale in SCALES]


def fit_epochs(model, evaluation, first_epoch, epochs):
    dataset = tf.data.Dataset.from_tensor_slices((FEATURES, np.zeros((4, 2), np.float32))).batch(2)
    model.fit(
        dataset,
        initial_epoch=first_epoch,
        epochs=epochs,
        callbacks=[SetWeightsAtEpochEnd(WEIGHTS_BY_EPOCH), evaluation],
        verbose=0,
    )


def make_evaluation(checkpoint_path, completed_epochs=0):
    features = tf.data.Dataset.from_tensor_slices(FEATURES).batch(4)
    return EpochEvaluation(
        features, LABELS, ["a", "b"], metric="loss", checkpoint_path=checkpoint_path, completed_epochs=completed_epochs
    )


@pytest.fixture
def first_two_epochs(tmp_path):
    """The best-weights checkpoint of a run that finished 2 of 4 epochs, epoch 2 the best."""
    path = str(tmp_path / "checkpoints" / "best")
    evaluation = make_evaluation(path)
    fit_epochs(tiny_head_model(), evaluation, 0, 2)
    assert evaluation.best_epoch == 2
    return path, evaluation.best_value


def test_best_epoch_restored_after_resume(first_two_epochs):
    path, best_value = first_two_epochs
    model = tiny_head_model()
    evaluation = make_evaluation(path, completed_epochs=2)
    fit_epochs(model, evaluation, 2, 4)
    assert evaluation.best_epoch == 2
    assert evaluation.best_value == best_value
    for value, expected in zip(model.get_weights(), WEIGHTS_BY_EPOCH[1]):
        np.testing.assert_array_equal(value, expected)
    state = json.load(open(path + ".json"))
    assert state["best_epoch"] == 2
    assert state["best_value"] == best_value


def test_best_state_after_backup_discarded(first_two_epochs, caplog):
    path, _ = first_two_epochs
    # The backup contains 1 epoch and the best-weights state is of epoch 2, as when the
    # process stopped between the two writes.
    evaluation = make_evaluation(path, completed_epochs=1)
    fit_epochs(tiny_head_model(), evaluation, 1, 4)
    assert "written after the last backup (epoch 1)" in caplog.text
    assert evaluation.best_epoch == 2
    assert evaluation.best_value == pytest.approx(evaluation.best_metrics["loss"])


def test_best_state_of_other_checkpoint_discarded(first_two_epochs, caplog):
    path, _ = first_two_epochs
    state = json.load(open(path + ".json"))
    state["checkpoint_sha256"] = "0" * 64
    json.dump(state, open(path + ".json", "w"))
    model = tiny_head_model()
    evaluation = make_evaluation(path, completed_epochs=2)
    fit_epochs(model, evaluation, 2, 4)
    assert f"does not match its record {path}.json: the run stopped while writing it, or the file is damaged" in caplog.text
    # Only epochs 3 and 4 competed; epoch 3 (scale 0.5) beats epoch 4 (scale -1).
    assert evaluation.best_epoch == 3
    np.testing.assert_array_equal(model.get_weights()[0], WEIGHTS_BY_EPOCH[2][0])


# The backup itself.


class StopAfterEpoch(tf_keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("stopped by the test")


def test_backup_under_one_device_strategy(tmp_path):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = tiny_head_model()
    dataset = tf.data.Dataset.from_tensor_slices((FEATURES, np.zeros((4, 2), np.float32))).batch(2)
    log = recovery.EpochLog(os.path.join(recovery.backup_dir(str(tmp_path)), recovery.EPOCH_LOG_FILE), num_replicas=1)
    with pytest.raises(KeyboardInterrupt):
        model.fit(dataset, epochs=5, verbose=0, callbacks=[log, recovery.RunBackup(str(tmp_path)), StopAfterEpoch(2)])
    assert recovery.completed_epochs(str(tmp_path)) == 3

    # Pretend the process stopped after logging a fourth epoch but before its backup.
    log.on_epoch_end(3, {"loss": 9.0})
    state = recovery.read_resume_state(str(tmp_path))
    assert state.completed_epochs == 3
    assert len(state.epoch_logs) == 3
    assert state.num_replicas == 1

    with strategy.scope():
        resumed = tiny_head_model()
    history = resumed.fit(dataset, epochs=5, verbose=0, callbacks=[recovery.RunBackup(str(tmp_path))])
    assert history.epoch == [3, 4]
    assert int(resumed.optimizer.iterations.numpy()) == 10


def test_damaged_backup_names_file(tmp_path, caplog):
    model = tiny_head_model()
    dataset = tf.data.Dataset.from_tensor_slices((FEATURES, np.zeros((4, 2), np.float32))).batch(2)
    log = recovery.EpochLog(os.path.join(recovery.backup_dir(str(tmp_path)), recovery.EPOCH_LOG_FILE), num_replicas=1)
    model.fit(dataset, epochs=2, verbose=0, callbacks=[log, recovery.RunBackup(str(tmp_path))])

    # A damaged epoch log costs the history only, with a warning naming it.
    log_path = os.path.join(recovery.backup_dir(str(tmp_path)), recovery.EPOCH_LOG_FILE)
    with open(log_path, "w") as file:
        file.write("{not json")
    with caplog.at_level(logging.WARNING, logger="tfpeft.recovery"):
        assert recovery.read_resume_state(str(tmp_path)).epoch_logs == []
    assert f"Ignoring the damaged epoch log {log_path}" in caplog.text

    # A damaged backup stops the resume with the file and both ways out.
    index = tf.train.latest_checkpoint(os.path.join(recovery.backup_dir(str(tmp_path)), "chief")) + ".index"
    with open(index, "wb") as file:
        file.write(os.urandom(64))
    with pytest.raises(RunFolderError, match=r"The backup .*ckpt-\d+ of the unfinished run in .* cannot be read .*--overwrite-output-dir"):
        recovery.completed_epochs(str(tmp_path))


def test_no_backup_reads_none(tmp_path):
    assert recovery.completed_epochs(str(tmp_path)) == 0
    assert recovery.read_resume_state(str(tmp_path)) is None


# train() on a folder with an unfinished run.


@pytest.fixture(scope="module")
def tiny_options(tiny_bert_dir, toy_csv):
    return dict(
        model_name_or_path=tiny_bert_dir,
        train_file=toy_csv,
        policy="last_n:1",
        num_train_epochs=2,
        learning_rate=1e-3,
        max_seq_length=16,
        verbose=0,
    )


def settings_of(options):
    return {name: value for name, value in options.items() if name != "verbose"}


def test_train_rejects_other_config(tmp_path, tiny_options):
    write_run_config(tmp_path, **{**settings_of(tiny_options), "learning_rate": 5e-4})
    with pytest.raises(OutputDirError, match="learning_rate is 0.0005 there and 0.001 now"):
        tfpeft.train(output_dir=str(tmp_path), **tiny_options)
    assert os.listdir(tmp_path) == ["config.toml"]


def test_train_without_backup_starts_over(tmp_path, tiny_options):
    write_run_config(tmp_path, **settings_of(tiny_options))
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "stale.txt").write_text("from the stopped run")
    result = tfpeft.train(output_dir=str(tmp_path), **tiny_options)
    assert result.results["epochs_completed"] == 2
    assert not (tmp_path / "logs" / "stale.txt").exists()
    assert not (tmp_path / "backup").exists()


def test_train_resumes_after_training_finished(tmp_path, tiny_options, monkeypatch):
    import tfpeft.runs

    def fail(*args, **kwargs):
        raise RuntimeError("stopped while writing the run folder")

    with monkeypatch.context() as patch:
        patch.setattr(tfpeft.runs, "save_model_files", fail)
        with pytest.raises(RuntimeError, match="stopped while writing"):
            tfpeft.train(output_dir=str(tmp_path), **tiny_options)
    assert "results.json" not in os.listdir(tmp_path)
    assert recovery.completed_epochs(str(tmp_path)) == 2
    first_state = json.load(open(tmp_path / "checkpoints" / "best.json"))

    result = tfpeft.train(output_dir=str(tmp_path), **tiny_options)
    assert result.results["epochs_completed"] == 2
    assert len(result.results["history"]["loss"]) == 2
    assert result.results["best_epoch"] == first_state["best_epoch"]
    assert result.results["validation"]["macro_f1"] == first_state["best_metrics"]["macro_f1"]
    assert not (tmp_path / "backup").exists()


# A training process killed with SIGKILL, then run again.


def test_resume_after_sigkill(tmp_path, tiny_bert_dir):
    texts, labels = tiny.toy_examples(num_per_class=40, seed=1)
    train_file = tiny.write_csv(str(tmp_path / "train.csv"), texts, labels)
    texts, labels = tiny.toy_examples(num_per_class=4, seed=2)
    validation_file = tiny.write_csv(str(tmp_path / "validation.csv"), texts, labels)
    output_dir = tmp_path / "run"
    command = tfpeft_command(
        "train", "--model", tiny_bert_dir, "--train-file", train_file, "--validation-file", validation_file,
        "--test-fraction", "0", "--num-train-epochs", "4", "--per-device-train-batch-size", "2",
        "--max-seq-length", "16", "--learning-rate", "1e-3", "--policy", "last_n:1", "--output-dir", output_dir,
    )
    state_file = output_dir / "backup" / "chief" / "checkpoint"

    def second_backup_written():
        return state_file.exists() and 'model_checkpoint_path: "ckpt-2"' in state_file.read_text()

    with process_group() as group:
        first = group.start(command, tmp_path / "first.log")
        # Each epoch has 60 steps, so the kill lands long before the third backup.
        wait_until(lambda: second_backup_written() or first.poll() is not None, 240, "the second backup")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        assert first.returncode == -signal.SIGKILL, read(tmp_path / "first.log")[-3000:]
        assert "results.json" not in os.listdir(output_dir)

        second = group.start(command, tmp_path / "second.log")
        second.wait(timeout=300)
    log = read(tmp_path / "second.log")
    assert second.returncode == 0, log[-3000:]

    assert re.findall(r"\] Epoch (\d+)/4: ", log) == ["3", "4"]
    assert "2 of 4 epochs done" in log
    results = json.load(open(output_dir / "results.json"))
    assert results["epochs_completed"] == 4
    assert len(results["history"]["val_macro_f1"]) == 4
    best = int(np.argmax(results["history"]["val_macro_f1"]))
    assert results["best_epoch"] == best + 1
    assert results["validation"]["macro_f1"] == results["history"]["val_macro_f1"][best]
    assert not (output_dir / "backup").exists()

    # The saved weights are those of the best epoch, also when it came before the kill.
    metrics = tfpeft.evaluate(str(output_dir), test_file=validation_file, verbose=0)
    assert metrics["macro_f1"] == pytest.approx(results["validation"]["macro_f1"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(results["history"]["val_loss"][best], abs=1e-5)
