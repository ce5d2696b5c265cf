"""The launcher with small Python programs as workers; test_distributed.py launches training."""

import io
import json
import os
import signal
import sys
import time

import pytest

from tfpeft.cli import main
from tfpeft.errors import ConfigError, WorkerFailedError
from tfpeft.launcher import describe_exit, find_free_ports, launch, worker_command, worker_tf_config

# Each worker prints its TF_CONFIG task and its pid. Then worker 1 exits with the status in
# argv[1] or kills itself ("kill"), and worker 0 sleeps until it is stopped.
WORKER = """
import json, os, signal, sys, time
task = json.loads(os.environ["TF_CONFIG"])["task"]
print("task", task["index"], "of", json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"])
print("pid", os.getpid())
if task["index"] == 1:
    time.sleep(0.5)
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(int(sys.argv[1]))
time.sleep(600)
"""


def run_launch(action, timeout=60):
    stream = io.StringIO()
    start = time.monotonic()
    try:
        launch([sys.executable, "-c", WORKER, action], 2, timeout=timeout, stream=stream)
        error = None
    except WorkerFailedError as raised:
        error = raised
    return error, stream.getvalue(), time.monotonic() - start


def pids(output):
    return [int(line.split()[-1]) for line in output.splitlines() if " pid " in line]


def assert_stopped(pid):
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_killed_worker_named_and_others_stopped():
    error, output, seconds = run_launch("kill")
    assert str(error).startswith("worker 1 was killed by SIGKILL; stopping the other running workers (0)")
    assert error.task_id == 1
    assert error.exit_status == -signal.SIGKILL
    assert seconds < 30
    for pid in pids(output):
        assert_stopped(pid)


def test_failed_worker_exit_status_named():
    error, output, _ = run_launch("3")
    assert str(error).startswith("worker 1 exited with status 3")
    assert error.exit_status == 3
    assert "[worker 0] task 0 of ['127.0.0.1:" in output
    assert "[worker 1] task 1 of ['127.0.0.1:" in output


def test_timeout_stops_all_workers():
    error, output, seconds = run_launch("0", timeout=3)
    assert "workers 0 still running after the 3 s timeout" in str(error)
    assert seconds < 30
    for pid in pids(output):
        assert_stopped(pid)


def test_all_workers_succeed(capsys):
    code = "import json, os; print(json.loads(os.environ['TF_CONFIG'])['task']['index'])"
    assert main(["launch", "--workers", "3", "--", sys.executable, "-c", code]) == 0
    lines = sorted(capsys.readouterr().out.splitlines())
    assert lines == ["[worker 0] 0", "[worker 1] 1", "[worker 2] 2"]


def test_cli_names_dead_worker(capsys):
    status = main(["launch", "--workers", "2", "--", sys.executable, "-c", WORKER, "kill"])
    assert status == 1
    assert "tfpeft launch: error: worker 1 was killed by SIGKILL" in capsys.readouterr().err


def test_launch_input_checked():
    with pytest.raises(ConfigError, match="needs a command"):
        launch([], 2)
    with pytest.raises(ConfigError, match="num_workers=0"):
        launch(["true"], 0)


def test_tf_config_of_each_worker():
    addresses = ["127.0.0.1:1", "127.0.0.1:2"]
    assert json.loads(worker_tf_config(addresses, 1)) == {
        "cluster": {"worker": addresses},
        "task": {"type": "worker", "index": 1},
    }


def test_free_ports_distinct():
    ports = find_free_ports(4)
    assert len(set(ports)) == 4
    assert all(0 < port < 65536 for port in ports)


def test_tfpeft_command_uses_this_interpreter():
    assert worker_command(["tfpeft", "train", "--seed", "1"]) == [sys.executable, "-m", "tfpeft", "train", "--seed", "1"]
    assert worker_command(["python3", "x.py"]) == ["python3", "x.py"]


def test_exit_descriptions():
    assert describe_exit(2) == "exited with status 2"
    assert describe_exit(-signal.SIGTERM) == "was killed by SIGTERM"
