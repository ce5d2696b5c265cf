"""Start, watch and always stop the processes of multi-process tests."""

import contextlib
import os
import signal
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tfpeft_command(*args):
    """Return the command that runs ``tfpeft ARGS`` from this checkout with this interpreter."""
    return [sys.executable, "-m", "tfpeft", *map(str, args)]


def child_env(**extra):
    """Return an environment for a child process: unbuffered output, no inherited TF_CONFIG."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", HF_HUB_OFFLINE="1")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


class ProcessGroup:
    """Processes started by one test; ``stop_all`` kills whatever still runs."""

    def __init__(self):
        self.processes = []

    def start(self, command, log_path, env=None):
        """Start ``command`` with stdout and stderr going to ``log_path``; return the process."""
        log = open(log_path, "w", encoding="utf-8")
        try:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env or child_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        self.processes.append(process)
        return process

    def stop_all(self):
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


@contextlib.contextmanager
def process_group():
    """Yield a ``ProcessGroup`` whose processes are killed on exit, on success and on failure."""
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.stop_all()


def wait_until(condition, timeout, what, interval=0.02):
    """Call ``condition`` until it returns true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def read(path):
    with open(path, encoding="utf-8", errors="replace") as file:
        return file.read()
