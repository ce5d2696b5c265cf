"""Checkpoints of what trains: contents by stable name, sizes, exact restore and resume."""

import os

import numpy as np
import pytest
import tensorflow as tf

import tfpeft
import tfpeft.runs
from tfpeft import recovery
from tfpeft.checkpoints import (
    TrainableState,
    checkpoint_names,
    read_trainable,
    save_trainable,
    variable_names,
)
from tfpeft.errors import RunFolderError
from tfpeft.model import build_classifier
from tfpeft.policies import apply_policy
from tfpeft.training import compile_classifier, TrainingConfig

NUM_LABELS = 3  # the toy CSV's classes


def classifier(model_dir, policy, dropout=0.1):
    backbone = tfpeft.load_backbone(model_dir)
    model = build_classifier(backbone, NUM_LABELS, dropout=dropout)
    apply_policy(backbone, policy)
    return model, backbone


def split_names(model, backbone):
    """Return the stable names of the trainable and of the frozen variables."""
    trainable_ids = {id(variable) for variable in model.trainable_variables}
    named = variable_names(model, backbone)
    return (
        {name for name, variable in named if id(variable) in trainable_ids},
        {name for name, variable in named if id(variable) not in trainable_ids},
    )


def data_bytes(prefix):
    folder, base = os.path.split(prefix)
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder) if name.startswith(base + ".data"))


def stop_in_run_folder(monkeypatch, output_dir, options):
    """Train, then stop while writing the run folder, so that the backup and best checkpoint stay."""

    def fail(*args, **kwargs):
        raise RuntimeError("stopped while writing the run folder")

    with monkeypatch.context() as patch:
        patch.setattr(tfpeft.runs, "save_model_files", fail)
        with pytest.raises(RuntimeError, match="stopped while writing"):
            tfpeft.train(output_dir=output_dir, **options)


@pytest.mark.parametrize(
    "policy, feature_cache", [("head", True), ("head", False), ("last_n:1", True)], ids=["head", "head-no-cache", "last_n1"]
)
def test_checkpoints_contain_only_trainable(tmp_path, monkeypatch, tiny_bert_dir, toy_csv, policy, feature_cache):
    output_dir = str(tmp_path / "run")
    options = dict(
        model_name_or_path=tiny_bert_dir, train_file=toy_csv, policy=policy, feature_cache=feature_cache,
        num_train_epochs=2, learning_rate=1e-3, max_seq_length=16, verbose=0,
    )
    stop_in_run_folder(monkeypatch, output_dir, options)
    model, backbone = classifier(tiny_bert_dir, policy)
    trainable, frozen = split_names(model, backbone)
    assert frozen and trainable
    if policy == "head":
        assert trainable == {"head/kernel", "head/bias"}
    else:
        assert {name.split("/")[1] for name in trainable if name.startswith("encoder/")} == {"layer_._1"}

    best = os.path.join(output_dir, "checkpoints", "best")
    backup = tf.train.latest_checkpoint(os.path.join(recovery.backup_dir(output_dir), "chief"))
    for path in (best, backup):
        names = checkpoint_names(path)
        assert set(names["weights"]) == trainable
        keys = " ".join(key for key, _ in tf.train.list_variables(path))
        escaped = [name.replace(".", "..").replace("/", ".S") for name in frozen]
        assert not [name for name in escaped if name in keys]
    assert checkpoint_names(best)["slots"] == []
    assert set(checkpoint_names(backup)["slots"]) == {(name, slot) for name in trainable for slot in ("momentums", "velocities")}
    assert checkpoint_names(backup)["optimizer"] == ["iterations"]
    assert recovery.completed_epochs(output_dir) == 2

    # Stored values: one float32 per trainable parameter in the best weights, three (weight
    # and two moments) in the backup.
    num_trainable = sum(int(np.prod(variable.shape)) for variable in model.trainable_variables)
    best_elements = sum(int(np.prod(shape)) for key, shape in tf.train.list_variables(best) if "/weights/" in key)
    assert best_elements == num_trainable
    backup_elements = sum(
        int(np.prod(shape)) for key, shape in tf.train.list_variables(backup) if "/weights/" in key or "/slots/" in key
    )
    assert backup_elements == 3 * num_trainable
    full = str(tmp_path / "full" / "weights")
    tfpeft.runs.save_weights(model, full)
    if policy == "head":
        assert num_trainable == 16 * NUM_LABELS + NUM_LABELS
        assert data_bytes(best) < 0.05 * data_bytes(full)
        assert data_bytes(backup) < 0.1 * data_bytes(full)
    else:
        assert data_bytes(best) < 0.5 * data_bytes(full)


def test_restore_into_rebuilt_model_exact(tiny_bert_dir, tmp_path):
    first, first_backbone = classifier(tiny_bert_dir, "last_n:1")
    config = TrainingConfig(learning_rate=1e-2)
    compile_classifier(first, config, total_steps=10)
    inputs = {"input_ids": np.full((4, 6), 5, np.int32), "attention_mask": np.ones((4, 6), np.int32)}
    first.fit(inputs, np.array([0, 1, 2, 0]), epochs=2, verbose=0)
    state = TrainableState(first, first_backbone, first.optimizer)
    path = tf.train.Checkpoint(trainable=state).write(str(tmp_path / "state"))

    # A second classifier in the same process, whose variable names carry another model prefix.
    second, second_backbone = classifier(tiny_bert_dir, "last_n:1")
    compile_classifier(second, config, total_steps=10)
    restored = TrainableState(second, second_backbone, second.optimizer)
    tf.train.Checkpoint(trainable=restored).read(path).assert_consumed()
    assert restored.names == state.names
    for name in state.names:
        np.testing.assert_array_equal(restored.weights[name].numpy(), state.weights[name].numpy())
        for slot in ("momentums", "velocities"):
            assert np.any(state.slots[name][slot].numpy() != 0)
            np.testing.assert_array_equal(restored.slots[name][slot].numpy(), state.slots[name][slot].numpy())
    assert int(restored.optimizer["iterations"].numpy()) == 2
    values = read_trainable(second, path, second_backbone)
    for variable, value in zip(first.trainable_variables, values):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_other_frozen_weights_rejected(tiny_bert_dir, tmp_path):
    model, backbone = classifier(tiny_bert_dir, "head")
    path = save_trainable(model, str(tmp_path / "best"), backbone)
    values = read_trainable(model, path, backbone)
    np.testing.assert_array_equal(values[0], model.trainable_variables[0].numpy())

    other, other_backbone = classifier(tiny_bert_dir, "head")
    embeddings = other_backbone.embeddings.weights[0]
    embeddings.assign(embeddings + 1.0)
    with pytest.raises(RunFolderError, match="other frozen weights than this model has"):
        read_trainable(other, path, other_backbone)


def test_frozen_resume_matches_uninterrupted_run(tmp_path, monkeypatch, tiny_bert_no_dropout_dir, toy_csv):
    # One batch an epoch and no bucketing, so the resumed run's restarted shuffle order changes
    # only the order of a sum inside the batch.
    options = dict(
        model_name_or_path=tiny_bert_no_dropout_dir, train_file=toy_csv, policy="last_n:1",
        classifier_dropout=0.0, per_device_train_batch_size=64, bucket_by_length=False,
        num_train_epochs=4, learning_rate=1e-2, max_seq_length=16, metric_for_best_model="loss", verbose=0,
    )
    straight = tfpeft.train(output_dir=str(tmp_path / "straight"), **options)

    original = recovery.RunBackup.on_epoch_end

    def stop_after_second_backup(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt("stopped by the test")

    with monkeypatch.context() as patch:
        patch.setattr(recovery.RunBackup, "on_epoch_end", stop_after_second_backup)
        with pytest.raises(KeyboardInterrupt):
            tfpeft.train(output_dir=str(tmp_path / "resumed"), **options)
    assert recovery.completed_epochs(str(tmp_path / "resumed")) == 2
    resumed = tfpeft.train(output_dir=str(tmp_path / "resumed"), **options)

    assert resumed.results["epochs_completed"] == 4
    assert resumed.results["best_epoch"] == straight.results["best_epoch"]
    straight_model, resumed_model = straight.classifier.model, resumed.classifier.model
    trainable_ids = {id(variable) for variable in straight_model.trainable_variables}
    for before, after in zip(straight_model.weights, resumed_model.weights):
        if id(before) in trainable_ids:
            np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(after.numpy(), before.numpy())
    history = straight.results["history"]["loss"]
    np.testing.assert_allclose(resumed.results["history"]["loss"], history, rtol=1e-5)
    # The run folder's model is whole and loads as always.
    loaded = tfpeft.load(str(tmp_path / "resumed"))
    for before, after in zip(resumed_model.weights, loaded.model.weights):
        np.testing.assert_array_equal(after.numpy(), before.numpy())


def test_loss_scale_state_restored(tiny_bert_dir, tmp_path):
    # mixed_float16 training (on GPUs) wraps AdamW in a LossScaleOptimizer, whose dynamic loss
    # scale is training state too. The wrapper works the same on a CPU.
    import tf_keras

    def compiled():
        model, backbone = classifier(tiny_bert_dir, "head")
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(tf_keras.optimizers.AdamW(1e-3))
        model.compile(optimizer=optimizer, loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model, backbone

    first, first_backbone = compiled()
    inputs = {"input_ids": np.full((4, 6), 5, np.int32), "attention_mask": np.ones((4, 6), np.int32)}
    first.fit(inputs, np.array([0, 1, 2, 0]), epochs=3, verbose=0)
    state = TrainableState(first, first_backbone, first.optimizer)
    path = tf.train.Checkpoint(trainable=state).write(str(tmp_path / "state"))
    assert sorted(checkpoint_names(path)["optimizer"]) == [
        "iterations", "learning_rate", "loss_scale/current_loss_scale", "loss_scale/good_steps"
    ]

    second, second_backbone = compiled()
    restored = TrainableState(second, second_backbone, second.optimizer)
    tf.train.Checkpoint(trainable=restored).read(path).assert_consumed()
    assert int(restored.optimizer["loss_scale"].counter.numpy()) == 3
    assert float(restored.optimizer["loss_scale"].current_loss_scale.numpy()) == float(
        state.optimizer["loss_scale"].current_loss_scale.numpy()
    )
    np.testing.assert_array_equal(
        restored.slots["head/kernel"]["momentums"].numpy(), state.slots["head/kernel"]["momentums"].numpy()
    )
