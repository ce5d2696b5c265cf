import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import tfpeft
from tfpeft import distributed
from tfpeft.cli import main
from tfpeft.config import TrainingConfig
from tfpeft.errors import ConfigError, StrategyError, WorkerFailedError
from tfpeft.launcher import find_free_ports, worker_tf_config
from workers import child_env, process_group, read, tfpeft_command, wait_until

CLUSTER = {"cluster": {"worker": ["127.0.0.1:1111", "127.0.0.1:2222"]}, "task": {"type": "worker", "index": 1}}
# Options shared by the runs that compare weights: dropout 0 in the head (the backbone folder
# has dropout 0 too) and 48 training examples, which a global batch of 8 splits evenly.
TRAIN_OPTIONS = dict(
    policy="last_n:1",
    num_train_epochs=3,
    learning_rate=1e-3,
    max_seq_length=16,
    classifier_dropout=0.0,
    # Buckets would leave partial batches, which split unevenly between replicas, and the
    # comparisons are of the full model's training under each strategy.
    bucket_by_length=False,
    feature_cache=False,
)


def train_flags(options):
    flags = []
    for name, value in options.items():
        flag = name.replace("_", "-")
        if value is False:
            flags.append(f"--no-{flag}")
        elif value is True:
            flags.append(f"--{flag}")
        else:
            flags += [f"--{flag}", str(value)]
    return flags


def environ_with(tf_config):
    return {"TF_CONFIG": json.dumps(tf_config)}


# Strategy selection.


@pytest.mark.parametrize(
    "tf_config, num_gpus, expected",
    [
        (CLUSTER, 0, "multi_worker"),
        (CLUSTER, 4, "multi_worker"),
        (None, 2, "mirrored"),
        (None, 1, "one_device"),
        (None, 0, "one_device"),
        ({"cluster": {}}, 0, "one_device"),
    ],
)
def test_auto_strategy_choice(tf_config, num_gpus, expected):
    assert distributed.resolve_strategy_name("auto", tf_config=tf_config, num_gpus=num_gpus) == expected


def test_explicit_strategy_kept():
    for name in ("one_device", "mirrored", "multi_worker", "tpu"):
        assert distributed.resolve_strategy_name(name, tf_config=CLUSTER, num_gpus=8) == name


def test_auto_creates_one_device_on_cpu():
    strategy = distributed.create_strategy(TrainingConfig(strategy="auto"), environ={})
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1
    role = distributed.worker_role(strategy)
    assert role.is_chief and role.num_workers == 1
    assert distributed.describe_strategy(strategy, role) == "Strategy OneDeviceStrategy with 1 replicas"


def test_single_process_strategy_in_cluster_warns(caplog):
    strategy = distributed.create_strategy(TrainingConfig(strategy="one_device"), environ=environ_with(CLUSTER))
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert "every process of the cluster writes output_dir" in caplog.text


def test_worker_output_redirected():
    config = TrainingConfig(output_dir="runs/shared", logging_dir="runs/shared/tb")
    assert distributed.redirect_worker_output(config, distributed.WorkerRole()) == (config, None)

    worker = distributed.WorkerRole("worker", 1, num_workers=2, is_chief=False)
    moved, scratch = distributed.redirect_worker_output(config, worker)
    assert moved.output_dir == os.path.join(scratch.name, "run")
    assert moved.logging_dir is None
    assert os.path.basename(scratch.name).startswith("tfpeft-worker1-")
    scratch.cleanup()
    assert not os.path.exists(scratch.name)


def test_multi_worker_without_cluster_rejected():
    with pytest.raises(ConfigError, match="strategy='multi_worker' needs a cluster in the TF_CONFIG.*tfpeft launch"):
        distributed.create_strategy(TrainingConfig(strategy="multi_worker"), environ={})


def test_strategy_value_validated():
    with pytest.raises(ConfigError, match=r"Invalid strategy='mirror'.*one_device, mirrored"):
        TrainingConfig(strategy="mirror")


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('["worker"]', "must be a JSON object"),
        ('{"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}', "has a 'ps' job"),
        ('{"cluster": {"worker": ["a:1"]}}', "its 'task' is None"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "'chief' is not a job"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "index 2 is out of range"),
        ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "must list 'host:port'"),
    ],
)
def test_invalid_tf_config_rejected(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        distributed.read_tf_config({"TF_CONFIG": text})


def test_tf_config_unset_or_valid():
    assert distributed.read_tf_config({}) is None
    assert distributed.read_tf_config({"TF_CONFIG": "  "}) is None
    assert distributed.read_tf_config(environ_with(CLUSTER)) == CLUSTER


class FakeResolver:
    def __init__(self, tpu=None, zone=None, project=None):
        if tpu == "missing":
            raise ValueError("Please provide a TPU Name to connect to.")
        self.arguments = {"tpu": tpu, "zone": zone, "project": project}


@pytest.fixture
def fake_tpu(monkeypatch):
    """Replace the TPU resolver, connection, initialisation and strategy; record the calls."""
    calls = []
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", FakeResolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", lambda r: calls.append(("connect", r)))
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", lambda r: calls.append(("initialize", r)))
    monkeypatch.setattr(tf.distribute, "TPUStrategy", lambda r: ("strategy", r))
    return calls


def test_tpu_strategy_from_resolver(fake_tpu):
    config = TrainingConfig(strategy="tpu", tpu_name="my-tpu", tpu_zone="us-central1-b", gcp_project="proj")
    kind, resolver = distributed.create_strategy(config, environ={})
    assert kind == "strategy"
    assert resolver.arguments == {"tpu": "my-tpu", "zone": "us-central1-b", "project": "proj"}
    assert fake_tpu == [("connect", resolver), ("initialize", resolver)]


def test_tpu_address_defaults_to_environment(fake_tpu):
    _, resolver = distributed.create_strategy(TrainingConfig(strategy="tpu"), environ={})
    assert resolver.arguments == {"tpu": None, "zone": None, "project": None}


def test_tpu_not_found_error(fake_tpu):
    with pytest.raises(StrategyError, match=r"found no TPU from tpu_name='missing'.*--tpu-name local"):
        distributed.create_strategy(TrainingConfig(strategy="tpu", tpu_name="missing"), environ={})
    assert fake_tpu == []


def test_auto_never_picks_tpu(fake_tpu):
    strategy = distributed.create_strategy(TrainingConfig(strategy="auto"), environ={})
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert fake_tpu == []


def test_train_dataset_sharded_by_data():
    dataset = distributed.shard_by_data(tf.data.Dataset.range(4))
    assert dataset.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA


def test_single_worker_errors_unchanged():
    with pytest.raises(tf.errors.UnavailableError):
        with distributed.report_worker_failures(distributed.WorkerRole()):
            raise tf.errors.UnavailableError(None, None, "peer down")


HEARTBEAT_ERROR = (
    "{{function_node __wrapped__CollectiveReduceV2_device_/job:worker/replica:0/task:0/device:CPU:0}} "
    "Collective ops is aborted by: Error reported from /job:worker/task:1: The following tasks are "
    "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\n [Op:CollectiveReduceV2]"
)


def test_peer_failure_names_worker():
    role = distributed.WorkerRole("worker", 0, num_workers=2, is_chief=True)
    with pytest.raises(WorkerFailedError) as raised:
        with distributed.report_worker_failures(role):
            raise tf.errors.UnavailableError(None, None, HEARTBEAT_ERROR)
    message = str(raised.value)
    assert message.startswith("Training stopped on worker 0: worker 1 stopped responding or failed (UnavailableError: ")
    assert "Collective ops is aborted by: Error reported from /job:worker/task:1" in message
    assert "function_node" not in message
    assert message.endswith("the run resumes from its last backup.")
    assert raised.value.task_id == 1


def test_collective_timeout_named():
    role = distributed.WorkerRole("worker", 1, num_workers=2, is_chief=False)
    with pytest.raises(WorkerFailedError, match=r"waited longer than collective_timeout=60 s") as raised:
        with distributed.report_worker_failures(role, collective_timeout=60):
            raise tf.errors.DeadlineExceededError(None, None, "Collective ops timed out")
    assert raised.value.task_id is None


# Training under real strategies, each in its own processes.

MIRRORED_SCRIPT = """
import json, sys
import tfpeft
import tensorflow as tf

# Two logical CPUs must be configured before TensorFlow initialises its devices.
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
options = json.loads(sys.argv[1])
out = sys.argv[2]
mirrored = tfpeft.train(strategy="mirrored", per_device_train_batch_size=4, output_dir=out + "/mirrored", verbose=0, **options)
single = tfpeft.train(strategy="one_device", per_device_train_batch_size=8, output_dir=out + "/single", verbose=0, **options)
np_diff = max(
    float(abs(a - b).max())
    for a, b in zip(mirrored.classifier.model.get_weights(), single.classifier.model.get_weights())
)
changed = max(
    float(abs(a - b).max())
    for a, b in zip(mirrored.classifier.model.get_weights(), tfpeft.load(out + "/mirrored").model.get_weights())
)
model = mirrored.classifier.model
variables = model.variables + model.optimizer.variables + [v for metric in model.metrics for v in metric.variables]
print(json.dumps({
    "all_distributed": all(isinstance(v, tf.distribute.DistributedValues) for v in variables),
    "replicas": [mirrored.results["num_replicas"], single.results["num_replicas"]],
    "strategies": [mirrored.results["strategy"], single.results["strategy"]],
    "iterations": [int(r.classifier.model.optimizer.iterations.numpy()) for r in (mirrored, single)],
    "total_steps": [
        r.classifier.model.optimizer.get_config()["learning_rate"]["config"]["total_steps"] for r in (mirrored, single)
    ],
    "losses": [mirrored.results["history"]["loss"], single.results["history"]["loss"]],
    "max_weight_difference": np_diff,
    "saved_difference": changed,
}))
"""


def test_mirrored_two_cpus_matches_one_device(tiny_bert_no_dropout_dir, toy_csv, tmp_path):
    options = dict(TRAIN_OPTIONS, model_name_or_path=tiny_bert_no_dropout_dir, train_file=toy_csv)
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, json.dumps(options), str(tmp_path)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Backbone, head, optimizer and metrics were all created in the strategy's scope.
    assert report["all_distributed"] is True
    assert report["replicas"] == [2, 1]
    assert report["strategies"] == ["MirroredStrategy", "OneDeviceStrategy"]
    # 48 training examples in global batches of 8: 6 optimizer steps an epoch for both.
    assert report["iterations"] == [18, 18]
    assert report["total_steps"] == [18, 18]
    np.testing.assert_allclose(report["losses"][0], report["losses"][1], atol=1e-5)
    assert report["max_weight_difference"] < 1e-4
    assert report["saved_difference"] == 0.0


def worker_losses(output, index):
    """Return the training loss of each epoch that ``[worker index]`` printed."""
    pattern = re.compile(rf"^\[worker {index}\] \[ *[0-9.]+s\] Epoch \d+/\d+: loss ([0-9.]+),", re.M)
    return [float(value) for value in pattern.findall(output)]


def test_launch_two_workers(tiny_bert_no_dropout_dir, toy_csv, tmp_path, monkeypatch, capsys):
    options = dict(TRAIN_OPTIONS, model_name_or_path=tiny_bert_no_dropout_dir, train_file=toy_csv)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # The workers' temporary folders go here, so the test can see that they are removed.
    monkeypatch.setenv("TMPDIR", str(scratch))
    runs = tmp_path / "runs"
    command = ["tfpeft", "train", *train_flags(options), "--per-device-train-batch-size", "4"]
    command += ["--collective-timeout", "120", "--output-dir", str(runs / "run")]

    status = main(["launch", "--workers", "2", "--timeout", "400", "--", *command])
    output = capsys.readouterr().out
    assert status == 0, output[-3000:]

    losses = [worker_losses(output, 0), worker_losses(output, 1)]
    assert len(losses[0]) == 3
    assert losses[0] == losses[1]
    assert "[worker 0] INFO tfpeft.training: Strategy MultiWorkerMirroredStrategy with 2 replicas" in output
    assert os.listdir(runs) == ["run"]
    assert os.listdir(scratch) == []
    assert "backup" not in os.listdir(runs / "run")
    results = json.load(open(runs / "run" / "results.json"))
    assert results["strategy"] == "MultiWorkerMirroredStrategy"
    assert results["num_replicas"] == 2
    assert results["epochs_completed"] == 3

    # Each worker trained on its half of every global batch: one process with the same
    # global batch gets the same weights.
    single = tfpeft.train(
        strategy="one_device", per_device_train_batch_size=8, output_dir=str(tmp_path / "single"), verbose=0, **options
    )
    launched = tfpeft.load(str(runs / "run")).model.get_weights()
    for value, expected in zip(launched, single.classifier.model.get_weights()):
        np.testing.assert_allclose(value, expected, atol=1e-4)
    np.testing.assert_allclose(single.results["history"]["loss"], losses[0], atol=1e-4)


def start_workers(group, options, log_prefix):
    """Start a two-worker job on new free ports; return the processes and their log paths."""
    addresses = [f"127.0.0.1:{port}" for port in find_free_ports(2)]
    logs = [f"{log_prefix}{index}.log" for index in range(2)]
    workers = [
        group.start(
            tfpeft_command("train", *train_flags(options)),
            logs[index],
            env=child_env(TF_CONFIG=worker_tf_config(addresses, index)),
        )
        for index in range(2)
    ]
    return workers, logs


def test_killed_worker_stops_the_other_then_job_resumes(tiny_bert_no_dropout_dir, toy_csv, tmp_path):
    options = dict(TRAIN_OPTIONS, model_name_or_path=tiny_bert_no_dropout_dir, train_file=toy_csv)
    # 24 steps an epoch, so the kill lands long before the job could finish.
    options.update(num_train_epochs=4, per_device_train_batch_size=1, collective_timeout=60)
    options.update(output_dir=tmp_path / "runs" / "run")
    state_file = tmp_path / "runs" / "run" / "backup" / "chief" / "checkpoint"

    def first_backup_written():
        return state_file.exists() and 'model_checkpoint_path: "ckpt-1"' in state_file.read_text()

    with process_group() as group:
        workers, logs = start_workers(group, options, str(tmp_path / "first"))
        wait_until(lambda: first_backup_written() or workers[0].poll() is not None, 240, "the first backup")
        assert workers[0].poll() is None, read(logs[0])[-3000:]

        workers[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        workers[0].wait(timeout=120)
        elapsed = time.monotonic() - killed_at
        log = read(logs[0])
        assert workers[0].returncode == 1, log[-3000:]
        assert elapsed < 120
        assert "tfpeft train: error: Training stopped on worker 0: worker 1 stopped responding or failed" in log

        # The same command on both workers resumes the job after its first epoch.
        restarted, logs = start_workers(group, options, str(tmp_path / "second"))
        for worker in restarted:
            worker.wait(timeout=300)
    for worker, path in zip(restarted, logs):
        log = read(path)
        assert worker.returncode == 0, log[-3000:]
        assert re.findall(r"\] Epoch (\d+)/4: ", log) == ["2", "3", "4"]
    results = json.load(open(tmp_path / "runs" / "run" / "results.json"))
    assert results["epochs_completed"] == 4
    assert os.listdir(tmp_path / "runs") == ["run"]
    assert "backup" not in os.listdir(tmp_path / "runs" / "run")
