"""``tfpeft launch``: a multi-worker cluster of local processes, to try multi-worker training.

``launch`` picks free ports on 127.0.0.1, starts the command once per worker with its own
``TF_CONFIG``, prints every worker's output with a ``[worker N]`` prefix, and waits. When a
worker fails, it names the worker and its exit status and stops the others. Real clusters set
``TF_CONFIG`` on each machine instead; see ``tfpeft.distributed``.
"""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from tfpeft.errors import ConfigError, WorkerFailedError
from tfpeft.progress import Progress

logger = logging.getLogger("tfpeft.launcher")

HOST = "127.0.0.1"
POLL_SECONDS = 0.1


def find_free_ports(count, host=HOST):
    """Return ``count`` distinct TCP ports that are free on ``host`` at the time of the call.

    Another process may still take a port before a worker binds it; the worker then fails to
    start its server and ``launch`` reports it.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def worker_tf_config(addresses, index):
    """Return the ``TF_CONFIG`` JSON of worker ``index`` in a cluster of ``worker`` tasks."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})


def worker_command(command):
    """Return ``command`` with a leading ``tfpeft`` run as ``python -m tfpeft`` of this interpreter.

    The workers then import the same tfpeft as the launcher, also where the ``tfpeft`` script
    is not on ``PATH``.
    """
    command = list(command)
    if command and command[0] == "tfpeft":
        return [sys.executable, "-m", "tfpeft"] + command[1:]
    return command


def describe_exit(status):
    """Return ``exited with status 3`` or ``was killed by SIGKILL`` for a ``subprocess`` status."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def launch(command, num_workers, *, timeout=None, stop_timeout=10.0, stream=None):
    """Run ``command`` as ``num_workers`` local workers of one cluster and wait for all of them.

    Worker 0 is the chief. Each worker gets the environment of this process plus its own
    ``TF_CONFIG`` and ``PYTHONUNBUFFERED=1``; the command should train with ``--strategy
    auto`` or ``multi_worker``. Output lines go to ``stream`` as they come, each prefixed
    with ``[worker N]``.

    Args:
        command: list of str. The program and its arguments, e.g.
            ``["tfpeft", "train", "--config", "run.toml"]``.
        num_workers: int. Number of worker processes, 1 or more.
        timeout: float or None. Seconds after which all workers are stopped; None waits.
        stop_timeout: float. Seconds a worker gets to exit after SIGTERM before SIGKILL.
        stream: text stream or None. Where worker output goes; default ``sys.stdout``.

    Raises:
        WorkerFailedError: when a worker exits with a non-zero status (named in the message,
            with ``task_id`` and ``exit_status`` set) or the timeout passes.

    Example:

    >>> tfpeft.launch(["tfpeft", "train", "--config", "run.toml"], num_workers=2)
    """
    if not command:
        raise ConfigError("launch needs a command to run, e.g. `tfpeft launch --workers 2 -- tfpeft train ...`.")
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ConfigError(f"Invalid num_workers={num_workers!r}: use 1 or more.")
    if os.environ.get("TF_CONFIG"):
        logger.warning("TF_CONFIG is set in this environment; each worker gets its own instead")

    addresses = [f"{HOST}:{port}" for port in find_free_ports(num_workers)]
    logger.info("Starting %d workers: %s", num_workers, ", ".join(addresses))
    printer = _LinePrinter(stream)
    processes, readers = [], []
    with _stop_on_sigterm():
        try:
            for index in range(num_workers):
                env = dict(os.environ, TF_CONFIG=worker_tf_config(addresses, index), PYTHONUNBUFFERED="1")
                process = subprocess.Popen(
                    worker_command(command),
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    errors="replace",
                    # Their own session, so that a Ctrl-C reaches only the launcher, which then
                    # stops them, and so that stopping one also stops what it started.
                    start_new_session=True,
                )
                processes.append(process)
                reader = threading.Thread(target=printer.copy, args=(process.stdout, f"[worker {index}] "), daemon=True)
                reader.start()
                readers.append(reader)
            _wait(processes, timeout)
        finally:
            _stop(processes, stop_timeout)
            for reader in readers:
                reader.join(timeout=stop_timeout)
    logger.info("All %d workers finished", num_workers)


def _wait(processes, timeout):
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        statuses = [process.poll() for process in processes]
        for index, status in enumerate(statuses):
            if status not in (None, 0):
                others = [str(i) for i, other in enumerate(statuses) if other is None]
                message = f"worker {index} {describe_exit(status)}"
                if others:
                    message += f"; stopping the other running workers ({', '.join(others)})"
                logger.error(message)
                raise WorkerFailedError(message, task_id=index, exit_status=status)
        if all(status == 0 for status in statuses):
            return
        if deadline is not None and time.monotonic() > deadline:
            running = [str(i) for i, status in enumerate(statuses) if status is None]
            message = f"workers {', '.join(running)} still running after the {timeout} s timeout; stopping them"
            logger.error(message)
            raise WorkerFailedError(message)
        time.sleep(POLL_SECONDS)


def _stop(processes, stop_timeout):
    """Send SIGTERM to every running worker's process group, then SIGKILL to what remains."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + stop_timeout
    for process in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            logger.warning("Worker process %d did not stop after SIGTERM; sending SIGKILL", process.pid)
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process, sig):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


@contextlib.contextmanager
def _stop_on_sigterm():
    """Turn SIGTERM into ``SystemExit`` while workers run, so that they are stopped too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _LinePrinter:
    """Copy lines from several workers to one stream without mixing two lines into one."""

    def __init__(self, stream):
        self.progress = Progress(verbose=1, stream=stream)
        self.lock = threading.Lock()

    def copy(self, pipe, prefix):
        with pipe:
            for line in pipe:
                with self.lock:
                    self.progress.block(prefix + line.rstrip("\n"))
