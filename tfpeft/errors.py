"""Exception and warning classes, sorted by what the caller can do about them."""


class TfpeftError(Exception):
    """Base class of every error tfpeft raises on purpose."""


class ConfigError(TfpeftError, ValueError):
    """An invalid option, flag or config file value; the message names it and the fix."""


class DataError(TfpeftError, ValueError):
    """Training or evaluation data that cannot be used; the message names file, column and row."""


class BackboneNotFoundError(TfpeftError, OSError):
    """A backbone name or folder that cannot be loaded from disk or the Hugging Face Hub."""


class UnsupportedArchitectureError(TfpeftError, ValueError):
    """A backbone whose ``model_type`` has no entry in the architecture registry."""


class OutputDirError(TfpeftError, FileExistsError):
    """An output folder that already contains files which a run would overwrite."""


class RunFolderError(TfpeftError, OSError):
    """A run folder that is missing files or was written by an incompatible version."""


class StrategyError(TfpeftError, RuntimeError):
    """A distribution strategy that cannot start here, such as ``tpu`` where no TPU is found."""


class WorkerFailedError(TfpeftError, RuntimeError):
    """A worker of a multi-worker job that stopped with an error, or a peer that went away.

    Attributes:
        task_id: int or None. The index of the worker that failed, where known.
        exit_status: int or None. Its exit status; negative for a signal, as in ``subprocess``.
    """

    def __init__(self, message, task_id=None, exit_status=None):
        super().__init__(message)
        self.task_id = task_id
        self.exit_status = exit_status
class ExportError(TfpeftError, OSError):
    """A SavedModel export that cannot be written: the version exists, or an op is not servable."""


class GraphTokenizerError(TfpeftError, ValueError):
    """A tokenizer that has no in-graph form; an export then serves token ids only."""


class KerasVersionError(TfpeftError, ImportError):
    """``tf.keras`` is bound to Keras 3, which the transformers TF classes cannot run on."""


class TfpeftWarning(UserWarning):
    """A setup that works but loses something the user may expect."""


def closest_match(name, candidates):
    """Return the candidate closest to a misspelled ``name``, or None where nothing is close."""
    import difflib

    matches = difflib.get_close_matches(name, list(candidates), n=1)
    return matches[0] if matches else None
