"""The run folder: what a finished run writes, and ``load`` to predict with it later.

Layout::

    OUTPUT_DIR/
      config.toml          the full TrainingConfig of the run
      label_map.json       class names in id order
      tokenizer/           the tokenizer files
      model/               backbone config.json, classifier.json and the TF checkpoint weights;
                           for a LoRA run adapter_config.json and adapter_weights.npz instead
                           of the weights (the adapters, the head and what else trained)
      results.json         test metrics, parameter counts, policy, timings, versions
      predictions.csv      test predictions
      report.md            metrics, per-class table, parameter report and pictures (tfpeft.reports)
      training_curves.png, confusion_matrix.png, errors.csv
                           the pictures and the most confident test mistakes
      checkpoints/         the trainable weights of the best epoch so far and its metrics
                           (best.json), while training (save_strategy='epoch'; tfpeft.checkpoints)
      backup/              the training state of an unfinished run, for resuming it: trainable
                           weights and their optimizer state
      logs/                TensorBoard event files (logging_dir)
      eval/<name>/         results of `tfpeft evaluate` on other data
"""

import json
import logging
import os
import shutil
import tempfile

import numpy as np

from tfpeft.errors import ConfigError, OutputDirError, RunFolderError

logger = logging.getLogger("tfpeft.runs")

CONFIG_FILE = "config.toml"
LABEL_MAP_FILE = "label_map.json"
RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.csv"
MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
CLASSIFIER_FILE = "classifier.json"
WEIGHTS_PREFIX = "weights"
REPLACED_RUN_DIR = ".replaced-run"
# Every entry a run folder may contain; --overwrite-output-dir replaces nothing else.
RUN_ENTRIES = {
    CONFIG_FILE,
    LABEL_MAP_FILE,
    RESULTS_FILE,
    PREDICTIONS_FILE,
    MODEL_DIR,
    TOKENIZER_DIR,
    "checkpoints",
    "logs",
    "backup",
    "eval",
    "report.md",
    "training_curves.png",
    "confusion_matrix.png",
    "errors.csv",
    REPLACED_RUN_DIR,
}


def check_output_dir(path, overwrite, config=None):
    """Check that a run may write to ``path``; return True when it resumes the run there.

    A missing or empty folder takes a new run. A folder with ``config.toml`` but no
    ``results.json`` contains an unfinished run: given the same ``config`` it is resumed, and
    given another config it is rejected with the first setting that differs. ``overwrite``
    permits replacing an earlier tfpeft run, finished or not, but never a folder of other
    files, which tfpeft did not write and will not delete.

    Raises:
        OutputDirError: naming the folder, what it contains and the way out.
    """
    if not os.path.exists(path):
        _check_writable(path)
        return False
    if not os.path.isdir(path):
        raise OutputDirError(f"output_dir {path!r} is a file, not a folder. Choose another path.")
    _check_writable(path)
    entries = sorted(os.listdir(path))
    if not entries:
        return False
    unfinished = CONFIG_FILE in entries and RESULTS_FILE not in entries
    if unfinished and config is not None and not overwrite:
        from tfpeft.recovery import check_same_config

        check_same_config(path, os.path.join(path, CONFIG_FILE), config)
        return True
    if not overwrite:
        raise OutputDirError(
            f"output_dir {path!r} is not empty (it contains {', '.join(entries[:5])}"
            f"{', ...' if len(entries) > 5 else ''}). Choose a new folder, or pass "
            "--overwrite-output-dir (overwrite_output_dir=True) to replace the earlier run."
        )
    if CONFIG_FILE not in entries:
        raise OutputDirError(
            f"output_dir {path!r} is not empty and is not a tfpeft run folder (no {CONFIG_FILE}), "
            "so --overwrite-output-dir will not delete its files. Choose a new folder."
        )
    unknown = [entry for entry in entries if entry not in RUN_ENTRIES]
    if unknown:
        raise OutputDirError(
            f"output_dir {path!r} contains files that tfpeft did not write ({', '.join(unknown[:5])}"
            f"{', ...' if len(unknown) > 5 else ''}), so --overwrite-output-dir will not replace "
            "the run there. Move those files out, or choose a new folder."
        )
    return False


def _check_writable(path):
    """Raise ``OutputDirError`` unless a folder can be created in ``path`` or its nearest existing parent.

    Checked by creating and removing a folder, before the backbone loads, because permission
    bits do not tell about read-only or virtual file systems.
    """
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputDirError(f"output_dir {path!r} cannot be created: {parent!r} is a file. Choose another path.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tfpeft-write-check-", dir=parent))
    except OSError as error:
        raise OutputDirError(
            f"output_dir {path!r} cannot be written: creating a folder in {parent!r} failed "
            f"({error.strerror}). Choose a folder you can write to."
        ) from None


def prepare_output_dir(path, overwrite):
    """Create ``path`` for a new run; with ``overwrite``, set an earlier run there aside.

    The earlier run is moved into ``path/.replaced-run`` rather than deleted, and
    ``discard_replaced_run`` deletes it once the new run has finished, so a new run that fails
    or is interrupted loses nothing. Where ``.replaced-run`` exists already, an earlier
    replacement failed: it keeps that last finished run, and the unfinished one is deleted.
    """
    check_output_dir(path, overwrite)
    entries = [entry for entry in os.listdir(path) if entry != REPLACED_RUN_DIR] if os.path.isdir(path) else []
    if entries:
        replaced = os.path.join(path, REPLACED_RUN_DIR)
        keep_earlier = os.path.isdir(replaced)
        os.makedirs(replaced, exist_ok=True)
        for entry in entries:
            source = os.path.join(path, entry)
            if keep_earlier and os.path.isdir(source):
                shutil.rmtree(source)
            elif keep_earlier:
                os.remove(source)
            else:
                os.replace(source, os.path.join(replaced, entry))
        logger.warning(
            "Moved the earlier run in %s to %s; it is deleted when the new run finishes", path, replaced
        )
    os.makedirs(path, exist_ok=True)


def discard_replaced_run(path):
    """Delete the earlier run that ``prepare_output_dir`` set aside, after a new run finished."""
    shutil.rmtree(os.path.join(path, REPLACED_RUN_DIR), ignore_errors=True)


def save_model_files(output_dir, model, backbone, classifier_settings, label_names=None):
    """Write the weights, the backbone config, the classifier settings and the tokenizer.

    A backbone with LoRA adapters writes only what trained (``tfpeft.lora.save_adapter``): the
    base backbone's weights are loaded from the base model again by ``load``.
    """
    from tfpeft.lora import applied_config, save_adapter

    model_dir = os.path.join(output_dir, MODEL_DIR)
    os.makedirs(model_dir, exist_ok=True)
    backbone.config.save_pretrained(model_dir)
    adapted = applied_config(backbone) is not None
    with open(os.path.join(model_dir, CLASSIFIER_FILE), "w", encoding="utf-8") as file:
        json.dump({**classifier_settings, "adapter": adapted}, file, indent=2)
        file.write("\n")
    if adapted:
        save_adapter(model_dir, model, backbone, label_names or [], _base_model_reference(backbone.source))
    else:
        save_weights(model, os.path.join(model_dir, WEIGHTS_PREFIX))
    backbone.tokenizer.save_pretrained(os.path.join(output_dir, TOKENIZER_DIR))


def _base_model_reference(source):
    """Return an alias or Hub name unchanged, and a folder as an absolute path."""
    from tfpeft.backbones import ALIASES

    if source in ALIASES or not os.path.isdir(os.path.expanduser(source)):
        return source
    return os.path.abspath(os.path.expanduser(source))


def save_weights(model, path):
    """Write the model's variables, without optimizer state, as a TF checkpoint at ``path``."""
    import tensorflow as tf

    # Tracking the layers rather than the model leaves out the optimizer the model tracks.
    tf.train.Checkpoint(layers=model.layers).write(path)


def restore_weights(model, path):
    """Restore weights written by ``save_weights``; every variable of ``model`` must match."""
    import tensorflow as tf

    status = tf.train.Checkpoint(layers=model.layers).read(path)
    status.assert_existing_objects_matched()


def check_batch_size(batch_size):
    """Raise ``ConfigError`` unless ``batch_size`` is None (the run's own) or 1 or more."""
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(
            f"Invalid batch_size={batch_size!r} (--batch-size): use 1 or more, or leave it unset "
            "for the run's per_device_eval_batch_size."
        )


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, ensure_ascii=False)
        file.write("\n")


class TextClassifier:
    """A trained classifier that predicts class names for raw strings.

    Returned by ``tfpeft.load``. ``model`` is the tf_keras model, which takes token ids;
    ``predict`` and ``predict_proba`` tokenize first, with the run's ``max_seq_length`` and
    ``truncation``. A classifier trained on sentence pairs (``config.text_pair_column`` set)
    needs ``text_pairs``, one second text per text.

    Example:

    >>> classifier = tfpeft.load("runs/bbc_news")
    >>> classifier.predict(["Shares in the bank fell 5% after the results."])
    ['business']
    """

    def __init__(self, model, backbone, label_map, config, policy):
        self.model = model
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.label_map = label_map
        self.config = config
        self.policy = policy

    @property
    def labels(self):
        return list(self.label_map.names)

    @property
    def takes_pairs(self):
        """True when the classifier was trained on sentence pairs."""
        return self.config.text_pair_column is not None

    def predict_logits(self, texts, batch_size=None, *, text_pairs=None):
        """Return float32 logits ``[len(texts), num_labels]``."""
        from tfpeft.data import encode_texts, make_dataset
        from tfpeft.evaluation import predict_logits

        check_batch_size(batch_size)
        texts = list(texts)  # str, or UTF-8 bytes as an exported model takes them
        if self.takes_pairs and text_pairs is None:
            raise ConfigError(
                f"This classifier was trained on sentence pairs (text_pair_column="
                f"{self.config.text_pair_column!r}); pass text_pairs (--text-pair on the command "
                "line) with one second text per text."
            )
        if not self.takes_pairs and text_pairs is not None:
            raise ConfigError("This classifier was trained on single texts; drop text_pairs (--text-pair).")
        if text_pairs is not None:
            text_pairs = list(text_pairs)
        if not texts:
            return np.zeros((0, self.label_map.num_labels), dtype=np.float32)
        encoded = encode_texts(
            self.tokenizer,
            texts,
            self.config.max_seq_length,
            text_pairs=text_pairs,
            truncation=self.config.truncation,
        )
        if batch_size is None:
            batch_size = self.config.per_device_eval_batch_size
        return predict_logits(self.model, make_dataset(encoded, batch_size=batch_size))

    def predict_proba(self, texts, batch_size=None, *, text_pairs=None):
        """Return class probabilities ``[len(texts), num_labels]``, columns in ``labels`` order."""
        from tfpeft.evaluation import softmax

        return softmax(self.predict_logits(texts, batch_size, text_pairs=text_pairs))

    def predict(self, texts, batch_size=None, *, text_pairs=None):
        """Return the predicted class name of each text (or sentence pair)."""
        logits = self.predict_logits(texts, batch_size, text_pairs=text_pairs)
        return self.label_map.decode(logits.argmax(axis=-1))


def load(run_dir, *, base_model=None):
    """Load a finished run folder as a ``TextClassifier``, in this or a new process.

    The backbone is rebuilt from the run's own ``model/config.json`` and the trained weights are
    restored from its checkpoint, so the original backbone folder is not needed. A LoRA run
    holds only its adapters: its base backbone is loaded from the base model named in
    ``model/adapter_config.json``, or from ``base_model``, and must be the same architecture
    and size it was trained on.

    Args:
        run_dir: str. The output_dir of a finished run.
        base_model: str or None. For a LoRA run: a folder, alias or Hub name of the base
            backbone, in place of the one the run recorded (after moving the folder, say).
    """
    from tensorflow import errors as tf_errors

    from tfpeft.backbones import TOKENIZER_FILES, load_backbone
    from tfpeft.config import TrainingConfig
    from tfpeft.data import LabelMap
    from tfpeft.model import build_classifier
    from tfpeft.policies import apply_policy

    model_dir = os.path.join(run_dir, MODEL_DIR)
    if not os.path.isdir(run_dir):
        problem = "is a file, not a folder" if os.path.exists(run_dir) else "does not exist"
        raise RunFolderError(
            f"The run folder {run_dir!r} {problem}. Pass the output_dir of a completed `tfpeft train`."
        )
    required = [CONFIG_FILE, LABEL_MAP_FILE, TOKENIZER_DIR, os.path.join(MODEL_DIR, CLASSIFIER_FILE)]
    missing = [name for name in required if not os.path.exists(os.path.join(run_dir, name))]
    if missing:
        raise RunFolderError(
            f"{run_dir!r} is not a finished tfpeft run folder: missing {', '.join(missing)}. "
            "Pass the output_dir of a completed `tfpeft train`."
        )

    config = TrainingConfig.from_toml(os.path.join(run_dir, CONFIG_FILE))
    label_map = LabelMap(_read_run_json(run_dir, LABEL_MAP_FILE, list))
    settings = _read_run_json(run_dir, os.path.join(MODEL_DIR, CLASSIFIER_FILE), dict)
    if settings.get("num_labels", label_map.num_labels) != label_map.num_labels:
        raise _damaged(
            run_dir, LABEL_MAP_FILE,
            f"it lists {label_map.num_labels} classes but the trained head has {settings['num_labels']}",
        )
    if not any(os.path.isfile(os.path.join(run_dir, TOKENIZER_DIR, name)) for name in TOKENIZER_FILES):
        raise _damaged(run_dir, TOKENIZER_DIR, f"it has none of the tokenizer files {', '.join(TOKENIZER_FILES)}")
    if settings.get("adapter"):
        return _load_adapter_run(run_dir, config, label_map, settings, base_model)
    if not os.path.isfile(os.path.join(model_dir, WEIGHTS_PREFIX + ".index")):
        raise _damaged(run_dir, os.path.join(MODEL_DIR, WEIGHTS_PREFIX + ".index"), "the weights file is missing")
    backbone = load_backbone(
        model_dir, pretrained=False, tokenizer_path=os.path.join(run_dir, TOKENIZER_DIR)
    )
    backbone.source = settings["backbone"]
    model = build_classifier(
        backbone,
        label_map.num_labels,
        pooling=settings["pooling"],
        dropout=settings["classifier_dropout"],
        token_type_ids=settings.get("token_type_ids", False),
    )
    policy = apply_policy(
        backbone, settings["policy"], pooling=settings["pooling"], frozen_dropout=settings["frozen_dropout"]
    )
    try:
        restore_weights(model, os.path.join(model_dir, WEIGHTS_PREFIX))
    except (AssertionError, ValueError, tf_errors.OpError) as error:
        raise _damaged(run_dir, MODEL_DIR, f"its weights do not fit the model ({error})") from error
    return TextClassifier(model, backbone, label_map, config, policy)


def _damaged(run_dir, name, problem):
    return RunFolderError(
        f"The run folder {run_dir!r} is damaged: {name}: {problem}. Train the run again, or "
        "restore the folder from a copy."
    )


def _read_run_json(run_dir, name, kind):
    """Return the JSON ``kind`` (list or dict) in ``run_dir/name``; raise ``RunFolderError`` if damaged."""
    try:
        with open(os.path.join(run_dir, name), encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError) as error:
        raise _damaged(run_dir, name, f"it cannot be read as JSON ({error})") from error
    if not isinstance(data, kind) or not data:
        raise _damaged(run_dir, name, f"expected a non-empty JSON {'array' if kind is list else 'object'}")
    return data
def _load_adapter_run(run_dir, config, label_map, settings, base_model):
    """Load a LoRA run: the base backbone, the run's adapters on it, and the trained weights."""
    from tfpeft.backbones import load_backbone
    from tfpeft.lora import check_base, load_adapter, read_adapter_config
    from tfpeft.model import build_classifier
    from tfpeft.policies import apply_policy

    model_dir = os.path.join(run_dir, MODEL_DIR)
    adapter_config = read_adapter_config(model_dir)
    backbone = load_backbone(
        base_model or adapter_config["base_model"], tokenizer_path=os.path.join(run_dir, TOKENIZER_DIR)
    )
    model = build_classifier(
        backbone,
        label_map.num_labels,
        pooling=settings["pooling"],
        dropout=settings["classifier_dropout"],
        token_type_ids=settings.get("token_type_ids", False),
    )
    # Before apply_policy, whose target names depend on the architecture.
    check_base(adapter_config, backbone, model_dir)
    policy = apply_policy(
        backbone, settings["policy"], pooling=settings["pooling"], frozen_dropout=settings["frozen_dropout"]
    )
    load_adapter(model_dir, model, backbone)
    return TextClassifier(model, backbone, label_map, config, policy)
