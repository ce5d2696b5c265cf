"""The one progress printer: stage messages, tables and long loops, silenced by ``verbose=0``.

Every line the printer writes also goes to the ``tfpeft.progress`` logger at DEBUG level, so an
application that routes tfpeft's logs to a file keeps the progress there too. DEBUG keeps the
lines from being shown twice by the command line, whose log handler shows INFO and above.
"""

import logging
import sys
import time

import tf_keras

logger = logging.getLogger("tfpeft.progress")

# Seconds between two lines of the same loop; the last line of a loop is always printed.
DEFAULT_INTERVAL = 10.0


def format_duration(seconds):
    """Return ``seconds`` as ``42.0 s``, ``3 min 05 s`` or ``1 h 02 min``."""
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, whole_seconds = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {whole_seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Print progress lines with the elapsed time when ``verbose`` is 1 or more.

    Args:
        verbose: int. 0 prints nothing; 1 or more prints.
        stream: a text stream; default ``sys.stdout``.
        interval: float. Minimum seconds between two lines of one loop (``task``).
        clock: a function returning seconds, ``time.monotonic`` by default.
    """

    def __init__(self, verbose=1, stream=None, *, interval=DEFAULT_INTERVAL, clock=time.monotonic):
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.interval = interval
        self.clock = clock
        self.start = clock()

    def step(self, message):
        """Print one stage message, prefixed with the seconds since this printer started."""
        logger.debug("%s", message)
        if self.verbose:
            elapsed = self.clock() - self.start
            print(f"[{elapsed:7.1f}s] {message}", file=self.stream, flush=True)

    def block(self, text):
        """Print a multi-line table or report as it is."""
        if self.verbose:
            print(text, file=self.stream, flush=True)

    def task(self, description, total, unit=""):
        """Return a ``ProgressTask`` that reports ``total`` units of work as they are done."""
        return ProgressTask(self, description, total, unit)

    @property
    def keras_verbose(self):
        """The ``verbose`` value for ``model.fit`` and ``model.predict``: always 0.

        Keras' own progress bar would be a second printing channel; pass ``fit_callback()`` or
        ``predict_callback()`` to Keras instead.
        """
        return 0

    def fit_callback(self):
        """Return a Keras callback that prints each epoch, and long epochs step by step."""
        return FitProgress(self)

    def predict_callback(self, description):
        """Return a Keras callback that prints the batches of ``model.predict`` as they finish."""
        return PredictProgress(self, description)


class ProgressTask:
    """A loop of ``total`` units: prints done/total with the elapsed and the remaining time.

    Lines come at most every ``progress.interval`` seconds, and always when the last unit is
    done. The remaining time is an estimate that assumes the units left take as long on average
    as the ones done.
    """

    def __init__(self, progress, description, total, unit=""):
        self.progress = progress
        self.description = description
        self.total = max(int(total), 0)
        self.unit = unit
        self.done = 0
        self.start = progress.clock()
        self._last_print = self.start

    @property
    def elapsed(self):
        return self.progress.clock() - self.start

    @property
    def finished(self):
        return self.total > 0 and self.done >= self.total

    def remaining(self):
        """Return the estimated seconds left, or None before the first unit is done."""
        if self.done <= 0 or not self.total:
            return None
        return self.elapsed / self.done * max(self.total - self.done, 0)

    def due(self):
        """Return whether ``progress.interval`` seconds have passed since the last line."""
        return self.progress.clock() - self._last_print >= self.progress.interval

    def update(self, done, detail=None, *, label=None, force=False):
        """Set the count of finished units to ``done``, and print a line when one is due.

        Args:
            done: int. Units finished so far.
            detail: str or None. Text put after the count, such as the latest metrics.
            label: str or None. Text that replaces the description and the count, such as
                ``Epoch 2/3``.
            force: bool. Print even when the last line is more recent than the interval.
        """
        self.done = done
        if force or self.finished or self.due():
            self._last_print = self.progress.clock()
            self.progress.step(self.format_line(detail, label))

    def advance(self, num_units=1, detail=None, *, force=False):
        """Count ``num_units`` more units as finished; see ``update``."""
        self.update(self.done + num_units, detail, force=force)

    def format_line(self, detail=None, label=None):
        """Return the line ``update`` prints for the current count."""
        if label is None:
            unit = f" {self.unit}" if self.unit else ""
            label = f"{self.description}: {self.done}{unit}"
            if self.total:
                label = f"{self.description}: {self.done}/{self.total}{unit} ({100.0 * self.done / self.total:.0f}%)"
            line = f"{label}, {detail}" if detail else label
        else:
            line = f"{label}: {detail}" if detail else label

        if self.finished:
            return f"{line}; done in {format_duration(self.elapsed)}"
        timing = f"{format_duration(self.elapsed)} elapsed"
        remaining = self.remaining()
        if remaining is not None:
            timing += f", about {format_duration(remaining)} left"
        return f"{line}; {timing}"


def format_logs(logs, keys=None):
    """Return Keras logs as ``loss 0.4123, val_macro_f1 0.9310``: training keys, loss first."""
    if keys is None:
        keys = sorted(logs, key=lambda key: (key.startswith("val_"), key.removeprefix("val_") != "loss", key))
    return ", ".join(f"{key} {float(logs[key]):.4f}" for key in keys if key in logs)


class FitProgress(tf_keras.callbacks.Callback):
    """Print one line per epoch with the epoch's metrics, the elapsed and the remaining time.

    Within a long epoch it also prints the step and the running loss every
    ``progress.interval`` seconds. The remaining time counts every configured epoch, so it
    overestimates a run that early stopping ends sooner. List this callback after the one that
    adds validation metrics to the epoch logs, so that its lines show them.
    """

    def __init__(self, progress):
        super().__init__()
        # Batch logs stay tensors, read only when a line is printed, so steps need no host sync.
        self._supports_tf_logs = True
        self.progress = progress
        self.task = None
        self.num_epochs = None
        self.steps_per_epoch = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.num_epochs = int(self.params.get("epochs") or 1)
        self.steps_per_epoch = self.params.get("steps")
        # Counting steps rather than epochs gives a remaining time within the first epoch.
        units = self.num_epochs * (self.steps_per_epoch or 1)
        self.task = self.progress.task("Training", units, "steps" if self.steps_per_epoch else "epochs")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # The last step of an epoch is left to the epoch's own line, which follows at once.
        if not self.steps_per_epoch or batch + 1 == self.steps_per_epoch or not self.task.due():
            return
        done = self._epoch * self.steps_per_epoch + batch + 1
        label = f"Epoch {self._epoch + 1}/{self.num_epochs}, step {batch + 1}/{self.steps_per_epoch}"
        self.task.update(done, format_logs(logs or {}, ["loss"]), label=label)

    def on_epoch_end(self, epoch, logs=None):
        done = (epoch + 1) * (self.steps_per_epoch or 1)
        self.task.update(done, format_logs(logs or {}), label=f"Epoch {epoch + 1}/{self.num_epochs}", force=True)

    def on_train_end(self, logs=None):
        if self.task is not None and not self.task.finished:
            epochs_done = self.task.done // (self.steps_per_epoch or 1)
            self.progress.step(
                f"Training stopped after {epochs_done} of {self.num_epochs} epochs; "
                f"{format_duration(self.task.elapsed)} elapsed"
            )


class PredictProgress(tf_keras.callbacks.Callback):
    """Print the batches ``model.predict`` has finished, at most every ``progress.interval`` s."""

    def __init__(self, progress, description):
        super().__init__()
        # Without this, Keras copies every batch of predictions to numpy for the callback.
        self._supports_tf_logs = True
        self.progress = progress
        self.description = description
        self.task = None

    def on_predict_begin(self, logs=None):
        self.task = self.progress.task(self.description, self.params.get("steps") or 0, "batches")

    def on_predict_batch_end(self, batch, logs=None):
        self.task.advance(1)
