"""Distribution strategies: which one a run trains under, and which worker this process is.

``create_strategy`` turns the ``strategy`` setting into a ``tf.distribute.Strategy``.
``auto`` picks ``MultiWorkerMirroredStrategy`` when the ``TF_CONFIG`` environment variable
describes a cluster, ``MirroredStrategy`` on a machine with several GPUs and
``OneDeviceStrategy`` otherwise. Create the strategy before any other TensorFlow work in the
process: a multi-worker strategy starts a gRPC server, waits for every worker of the cluster
and enables collective operations, and TensorFlow 2.21 warns that tensors created before
that may fail afterwards.

``TF_CONFIG`` is the JSON that TensorFlow's cluster resolver reads, for example on the
first of two machines::

    {"cluster": {"worker": ["host1:12345", "host2:12345"]},
     "task": {"type": "worker", "index": 0}}

Worker 0 is the chief unless the cluster has a ``chief`` job. Only the chief writes the run
folder; ``tfpeft launch`` starts such a cluster on one machine.
"""

import contextlib
import dataclasses
import json
import logging
import os
import re
from typing import Optional

import tensorflow as tf

from tfpeft.config import STRATEGIES
from tfpeft.errors import ConfigError, StrategyError, WorkerFailedError

logger = logging.getLogger("tfpeft.distributed")

# Job names that MultiWorkerMirroredStrategy trains with; "ps" and "evaluator" belong to
# other strategies.
TASK_TYPES = ("chief", "worker")


def read_tf_config(environ=None):
    """Parse the ``TF_CONFIG`` environment variable.

    Returns None when it is unset or empty, else the dict, checked to hold a cluster of
    ``chief`` and ``worker`` tasks and a task of this process that is one of them.

    Raises:
        ConfigError: naming what is wrong in ``TF_CONFIG`` and the value it has.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"TF_CONFIG is not valid JSON ({error}): {text[:200]!r}. Set it to "
            '\'{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}\'.'
        ) from error
    if not isinstance(tf_config, dict):
        raise ConfigError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task'; got {text[:200]!r}.")

    cluster = tf_config.get("cluster") or {}
    if not isinstance(cluster, dict):
        raise ConfigError(f"TF_CONFIG 'cluster' must map job names to address lists; got {cluster!r}.")
    for job, addresses in cluster.items():
        if job not in TASK_TYPES:
            raise ConfigError(
                f"TF_CONFIG has a {job!r} job; tfpeft trains with MultiWorkerMirroredStrategy, "
                f"which uses only {' and '.join(TASK_TYPES)} jobs. Remove the {job!r} job."
            )
        if not isinstance(addresses, list) or not addresses:
            raise ConfigError(f"TF_CONFIG job {job!r} must list 'host:port' addresses; got {addresses!r}.")
    if len(cluster.get("chief", [])) > 1:
        raise ConfigError(f"TF_CONFIG lists {len(cluster['chief'])} chief tasks; a cluster has at most one.")

    if cluster:
        task = tf_config.get("task")
        if not isinstance(task, dict) or "type" not in task or "index" not in task:
            raise ConfigError(
                f"TF_CONFIG has a cluster but its 'task' is {task!r}; set "
                '"task": {"type": "worker", "index": N} to say which task this process is.'
            )
        task_type, index = task["type"], task["index"]
        if task_type not in cluster:
            raise ConfigError(
                f"TF_CONFIG task type {task_type!r} is not a job of its cluster ({', '.join(cluster)})."
            )
        if not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
            raise ConfigError(
                f"TF_CONFIG task index {index!r} is out of range: the {task_type!r} job has "
                f"{len(cluster[task_type])} tasks, numbered from 0."
            )
    return tf_config


def describes_cluster(tf_config):
    """Return whether a parsed ``TF_CONFIG`` lists at least one task."""
    return bool(tf_config and tf_config.get("cluster"))


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """The place of this process in a training cluster.

    A process that trains alone is the chief of a cluster of one.

    Args:
        task_type: str or None. ``chief`` or ``worker`` in a cluster, None alone.
        task_id: int. The index of the task in its job.
        num_workers: int. The number of processes that train together.
        is_chief: bool. Whether this process writes the run folder.
    """

    task_type: Optional[str] = None
    task_id: int = 0
    num_workers: int = 1
    is_chief: bool = True

    @property
    def name(self):
        """A label for logs, such as ``worker 1``."""
        if self.task_type is None:
            return "single worker"
        return f"{self.task_type} {self.task_id}"


def worker_role(strategy):
    """Return the ``WorkerRole`` of this process under ``strategy``."""
    if not strategy.extended._in_multi_worker_mode():
        return WorkerRole()
    resolver = strategy.cluster_resolver
    num_workers = sum(len(addresses) for addresses in resolver.cluster_spec().as_dict().values())
    return WorkerRole(
        task_type=resolver.task_type,
        task_id=int(resolver.task_id),
        num_workers=num_workers,
        is_chief=bool(strategy.extended.should_checkpoint),
    )


def resolve_strategy_name(name, *, tf_config=None, num_gpus=None):
    """Return the strategy that ``name`` stands for: ``auto`` becomes a concrete name.

    Args:
        name: str. One of ``STRATEGIES``.
        tf_config: dict or None. The parsed ``TF_CONFIG``.
        num_gpus: int or None. The visible GPUs; None counts them.
    """
    if name not in STRATEGIES:
        raise ConfigError(f"Invalid strategy={name!r}: use one of {', '.join(STRATEGIES)}.")
    if name != "auto":
        return name
    if describes_cluster(tf_config):
        return "multi_worker"
    if num_gpus is None:
        num_gpus = len(tf.config.list_physical_devices("GPU"))
    return "mirrored" if num_gpus > 1 else "one_device"


def create_strategy(config, *, environ=None):
    """Create the ``tf.distribute.Strategy`` that ``config.strategy`` names.

    Args:
        config: ``TrainingConfig``. Reads ``strategy``, ``collective_timeout`` and the TPU
            address settings ``tpu_name``, ``tpu_zone`` and ``gcp_project``.
        environ: mapping or None. Where to read ``TF_CONFIG``; None reads ``os.environ``.

    Raises:
        ConfigError: for an invalid ``TF_CONFIG``, or ``multi_worker`` without a cluster.
        StrategyError: when no TPU is found for ``tpu``.
    """
    tf_config = read_tf_config(environ)
    name = resolve_strategy_name(config.strategy, tf_config=tf_config)
    if tf_config and describes_cluster(tf_config) and name != "multi_worker":
        logger.warning(
            "TF_CONFIG describes a cluster, but strategy=%r trains this process alone, so every "
            "process of the cluster writes output_dir. Use strategy 'auto' or 'multi_worker' to "
            "train them together.",
            name,
        )
    return _BUILDERS[name](config, tf_config)


def _one_device(config, tf_config):
    device = "/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)


def _mirrored(config, tf_config):
    # TensorFlow 2.21 takes every local GPU, or every logical CPU device where there is none.
    return tf.distribute.MirroredStrategy()


def _multi_worker(config, tf_config):
    if not describes_cluster(tf_config):
        raise ConfigError(
            "strategy='multi_worker' needs a cluster in the TF_CONFIG environment variable, and "
            "TF_CONFIG is unset or has no cluster. Set TF_CONFIG on each machine, or try it on "
            "one machine with `tfpeft launch --workers 2 -- tfpeft train ...`."
        )
    # NCCL only runs on GPUs; RING is TensorFlow's gRPC implementation for CPUs.
    implementation = (
        tf.distribute.experimental.CommunicationImplementation.NCCL
        if tf.config.list_physical_devices("GPU")
        else tf.distribute.experimental.CommunicationImplementation.RING
    )
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementation,
        timeout_seconds=config.collective_timeout or None,
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    logger.info(
        "Multi-worker collectives: %s, timeout %s",
        implementation.name,
        f"{config.collective_timeout} s" if config.collective_timeout else "none",
    )
    return strategy


def _tpu(config, tf_config):
    # NOTE: this path has run only against a stand-in resolver in the tests, never on a TPU.
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=config.tpu_name, zone=config.tpu_zone, project=config.gcp_project
        )
    except (ValueError, RuntimeError) as error:
        where = f"tpu_name={config.tpu_name!r}" if config.tpu_name else "the environment (TPU_NAME)"
        raise StrategyError(
            f"strategy='tpu' found no TPU from {where}: {error}. On a Cloud TPU VM pass "
            "--tpu-name local; elsewhere pass the TPU name with --tpu-zone and --gcp-project, "
            "or a grpc://host:port address."
        ) from error
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


_BUILDERS = {
    "one_device": _one_device,
    "mirrored": _mirrored,
    "multi_worker": _multi_worker,
    "tpu": _tpu,
}


def shard_by_data(dataset):
    """Return ``dataset`` set to be split between workers element by element.

    Every worker builds the same in-memory pipeline with the same shuffle seed, and the
    multi-worker strategy gives each worker its part of every global batch. The default
    policy would first try to split by files, which an in-memory dataset has none of.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def strategy_name(strategy):
    """Return the public class name of ``strategy``, e.g. ``MultiWorkerMirroredStrategy``."""
    # The class behind tf.distribute.MultiWorkerMirroredStrategy is CollectiveAllReduceStrategy.
    for name in ("MultiWorkerMirroredStrategy", "MirroredStrategy", "TPUStrategy", "OneDeviceStrategy"):
        if isinstance(strategy, getattr(tf.distribute, name)):
            return name
    return type(strategy).__name__


def describe_strategy(strategy, role):
    """Return a log line naming the strategy, its replicas and this worker."""
    text = f"Strategy {strategy_name(strategy)} with {strategy.num_replicas_in_sync} replicas"
    if role.num_workers > 1:
        text += f" on {role.num_workers} workers; this is {role.name}"
        text += " (chief)" if role.is_chief else ""
    return text


def agree_with_chief(strategy, role, value):
    """Return the chief's integer ``value`` on every worker.

    With several workers this is a collective operation, so it is also a barrier: no worker
    returns before the chief has called it.
    """
    if role.num_workers == 1:
        return value
    # The chief's replicas contribute the value and the others 0. Every worker has the same
    # number of replicas, so the sum is the value times that number.
    replicas_per_worker = strategy.num_replicas_in_sync // role.num_workers
    contribution = value if role.is_chief else 0

    @tf.function
    def total():
        per_replica = strategy.run(lambda: tf.constant(contribution, tf.int64))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return int(total()) // replicas_per_worker


def redirect_worker_output(config, role):
    """Return ``(config, scratch)``, moving the output of a worker other than the chief.

    Every worker runs the same steps, but only the chief's run folder is kept. The others
    get ``config`` with ``output_dir`` (and ``logging_dir``) in ``scratch``, a new
    ``tempfile.TemporaryDirectory`` for the caller to remove. The chief gets
    ``(config, None)``.
    """
    if role.is_chief:
        return config, None
    import tempfile

    scratch = tempfile.TemporaryDirectory(prefix=f"tfpeft-{role.task_type}{role.task_id}-")
    return config.replace(output_dir=os.path.join(scratch.name, "run"), logging_dir=None), scratch


_TASK_PATTERN = re.compile(r"/job:(chief|worker)(?:/replica:\d+)?/task:(\d+)")


@contextlib.contextmanager
def report_worker_failures(role, collective_timeout=0):
    """Turn the error that a failed or unreachable worker causes into ``WorkerFailedError``.

    TensorFlow aborts the collective operations of every worker when one stops sending
    heartbeats, or when a collective waits longer than ``collective_timeout`` seconds. The
    message names the failed worker where TensorFlow's error names it. A process that trains
    alone gets TensorFlow's error unchanged.
    """
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError) as error:
        if role.num_workers == 1:
            raise
        own = (role.task_type, str(role.task_id))
        tasks = sorted({task for task in _TASK_PATTERN.findall(error.message) if task != own})
        if isinstance(error, tf.errors.DeadlineExceededError):
            cause = f"a collective operation waited longer than collective_timeout={collective_timeout} s"
        elif tasks:
            cause = ", ".join(f"{job} {index}" for job, index in tasks) + " stopped responding or failed"
        else:
            cause = "another worker stopped responding or failed"
        # TensorFlow's message starts with a long op trace, so keep the line with the cause.
        lines = [line.strip() for line in error.message.splitlines() if line.strip()] or [""]
        detail = next((line for line in lines if re.search("abort|timed out|timeout", line, re.I)), lines[0])
        detail = re.sub(r"\{\{.*?\}\}\s*", "", detail)
        raise WorkerFailedError(
            f"Training stopped on {role.name}: {cause} ({type(error).__name__}: {detail[:300]}). "
            "Restart every worker with the same command; the run resumes from its last backup.",
            task_id=int(tasks[0][1]) if len(tasks) == 1 else None,
        ) from error
