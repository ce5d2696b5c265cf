"""Export a run as a versioned SavedModel that TF Serving serves from raw text.

Layout written, the one TF Serving watches::

    MODELS_DIR/NAME/
      1/
        saved_model.pb
        variables/
        assets/labels.txt                    class names, one a line, in label-id order
        assets.extra/
          tf_serving_warmup_requests         PredictionLog records TF Serving replays on load
          tfpeft_export.json                 signatures, class names, max_seq_length, source run
          tokenizer/                         the run's tokenizer, for clients of serving_ids
      2/
        ...

Signatures:

- ``serving_default``: ``text``, string ``[None]`` (and ``text_pair`` for a run trained on
  sentence pairs), cleaned and tokenized inside the graph; outputs ``probabilities`` (float32 ``[None, num_labels]``), ``label_id`` (int64 ``[None]``),
  ``label`` (string ``[None]``) and ``logits`` (float32 ``[None, num_labels]``).
- ``serving_ids``: ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` where the
  backbone takes segment ids), int32 ``[None, None]``, for clients that tokenize themselves;
  same outputs.

A tokenizer without an in-graph form (see ``tfpeft.graph_tokenizers``) gives an export with
``serving_ids`` only, and a ``TfpeftWarning`` with the reason.

A version folder appears only when complete: the SavedModel is written to a hidden folder
beside it (TF Serving only loads all-digit folder names), its ops are checked, and then it is
renamed. An existing version is never overwritten.
"""

import dataclasses
import glob
import json
import os
import shutil
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from tfpeft.errors import ExportError, GraphTokenizerError, TfpeftWarning
from tfpeft.progress import Progress

TEXT_SIGNATURE = "serving_default"
IDS_SIGNATURE = "serving_ids"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
INFO_FILE = os.path.join("assets.extra", "tfpeft_export.json")
TOKENIZER_DIR = os.path.join("assets.extra", "tokenizer")
LABELS_FILE = "labels.txt"

# Ops that call back into the Python interpreter, which TF Serving does not have.
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})

# Texts for the warmup requests, chosen to touch every branch of the in-graph tokenizer: empty
# text, accents, punctuation and Chinese characters, a control character, and one text long
# enough to be truncated.
WARMUP_TEXTS = (
    "",
    "Café owners in Zürich said prices rose 3% (again)!",
    "北京 announced new rules\tfor\u200bonline\x07 shops.",
)


@dataclasses.dataclass
class ExportedModel:
    """The result of ``export``: the version folder and its signatures.

    Args:
        path: str. The version folder, ``MODELS_DIR/NAME/<version>``.
        version: int. The version number.
        signatures: list of str. The signature names in the SavedModel.
        text_signature_missing: str or None. Why ``serving_default`` is missing, or None.
    """

    path: str
    version: int
    signatures: list
    text_signature_missing: str = None


def existing_versions(model_dir):
    """Return the sorted version numbers of the all-digit folders in ``model_dir``."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(
        int(name) for name in os.listdir(model_dir) if name.isdigit() and os.path.isdir(os.path.join(model_dir, name))
    )


def next_version(model_dir):
    """Return one more than the highest version in ``model_dir``, or 1 when there is none."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def _choose_version(model_dir, version):
    from tfpeft.runs import CONFIG_FILE

    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ExportError(f"--to {model_dir!r} is a file; pass a folder such as models/NAME.")
    if os.path.isfile(os.path.join(model_dir, CONFIG_FILE)):
        # A version folder inside a run folder would make `tfpeft predict RUN_DIR` ambiguous.
        raise ExportError(
            f"--to {model_dir!r} is a tfpeft run folder ({CONFIG_FILE} is there); export to a "
            "folder of its own, such as models/NAME."
        )
    if version is None:
        return next_version(model_dir)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"--version must be a positive integer; got {version!r}.")
    if os.path.exists(os.path.join(model_dir, str(version))):
        raise ExportError(
            f"Version {version} already exists in {model_dir!r}, and an export never overwrites "
            f"one. Pass another --version, or leave it out to write version {next_version(model_dir)}."
        )
    return version


def _serving_functions(model, label_names, graph_tokenizer, pairs):
    """Return the signature functions, keyed by signature name, as closures over ``model``."""
    from tfpeft.text_cleaning import clean_text_tensor

    labels = tf.constant(label_names, dtype=tf.string)
    input_names = [tensor.name.split(":")[0] for tensor in model.inputs]
    with_type_ids = "token_type_ids" in input_names

    def classify(inputs):
        logits = model({name: inputs[name] for name in input_names}, training=False)
        logits = tf.cast(logits, tf.float32)
        label_id = tf.argmax(logits, axis=-1, output_type=tf.int64)
        return {
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "label_id": label_id,
            "label": tf.gather(labels, label_id),
            "logits": logits,
        }

    ids_spec = [
        tf.TensorSpec([None, None], tf.int32, name="input_ids"),
        tf.TensorSpec([None, None], tf.int32, name="attention_mask"),
    ]
    if with_type_ids:
        ids_spec.append(tf.TensorSpec([None, None], tf.int32, name="token_type_ids"))

        def classify_ids(input_ids, attention_mask, token_type_ids):
            return classify({"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids})

    else:

        def classify_ids(input_ids, attention_mask):
            return classify({"input_ids": input_ids, "attention_mask": attention_mask})

    functions = {IDS_SIGNATURE: tf.function(classify_ids, input_signature=ids_spec)}
    if graph_tokenizer is None:
        return functions

    def tokenized(*texts):
        inputs = graph_tokenizer(*[clean_text_tensor(text) for text in texts])
        if with_type_ids and "token_type_ids" not in inputs:
            # A single-text run on a backbone with segment ids: every token is in segment 0.
            inputs["token_type_ids"] = tf.zeros_like(inputs["input_ids"])
        return inputs

    if pairs:

        def classify_text(text, text_pair):
            # A core Assert op, so a client sending unequal batches gets this message.
            check = tf.debugging.assert_equal(
                tf.size(text), tf.size(text_pair),
                message="text and text_pair must have the same number of elements: one pair per text",
            )
            with tf.control_dependencies([check]):
                return classify(tokenized(tf.identity(text), text_pair))

        text_spec = [tf.TensorSpec([None], tf.string, name="text"), tf.TensorSpec([None], tf.string, name="text_pair")]
    else:

        def classify_text(text):
            return classify(tokenized(text))

        text_spec = [tf.TensorSpec([None], tf.string, name="text")]
    functions[TEXT_SIGNATURE] = tf.function(classify_text, input_signature=text_spec)
    return functions


def _build_module(model, label_names, graph_tokenizer, labels_path, pairs):
    module = tf.Module()
    # The module tracks the model's variables, not the tf_keras model itself, so the SavedModel
    # contains only TF functions and loads without Keras, transformers or tfpeft.
    module.classifier_variables = list(model.variables)
    module.labels_file = tf.saved_model.Asset(labels_path)
    if graph_tokenizer is not None:
        module.graph_tokenizer = graph_tokenizer
    functions = _serving_functions(model, label_names, graph_tokenizer, pairs)
    for name, function in functions.items():
        setattr(module, name, function)
    return module, functions


def _graph_tokenizer(classifier):
    from tfpeft.graph_tokenizers import build_graph_tokenizer

    config = classifier.config
    return build_graph_tokenizer(
        classifier.tokenizer, config.max_seq_length, config.truncation, pairs=classifier.takes_pairs
    )


def _warmup_texts(run_dir, max_seq_length, pairs=False):
    """Return a few texts of the run's test split, then ``WARMUP_TEXTS`` and a truncated text.

    For a run on pairs, return ``(texts, text_pairs)``: the test pairs, then each fixed text
    paired with the next one.
    """
    import csv

    from tfpeft.runs import PREDICTIONS_FILE

    rows = []
    predictions = os.path.join(run_dir, PREDICTIONS_FILE)
    if os.path.isfile(predictions):
        with open(predictions, newline="", encoding="utf-8") as file:
            rows = [row for _, row in zip(range(3), csv.DictReader(file))]
    # Every word is at least one token, so this text reaches max_seq_length.
    long_text = " ".join(["warmup"] * max_seq_length)
    texts = [row["text"] for row in rows] + list(WARMUP_TEXTS) + [long_text]
    if not pairs:
        return texts
    fixed = list(WARMUP_TEXTS) + [long_text]
    text_pairs = [row.get("text_pair", "") for row in rows] + fixed[1:] + fixed[:1]
    return texts, text_pairs


def write_warmup_requests(path, model_name, requests):
    """Write ``(signature_name, inputs)`` pairs as PredictionLog records in a TFRecord file.

    Args:
        path: str. The file, ``assets.extra/tf_serving_warmup_requests``.
        model_name: str. The model name the requests carry.
        requests: list of ``(str, dict of str to numpy array)``.
    """
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature_name
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def read_warmup_requests(path):
    """Return the ``(signature_name, inputs)`` pairs of a warmup file, inputs as numpy arrays."""
    from tensorflow_serving.apis import prediction_log_pb2

    requests = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        requests.append((request.model_spec.signature_name, inputs))
    return requests


def _warmup_requests(classifier, texts, signatures, text_pairs=None):
    from tfpeft.data import encode_texts
    from tfpeft.text_cleaning import to_utf8

    config = classifier.config
    encoded = encode_texts(
        classifier.tokenizer, texts, config.max_seq_length, text_pairs=text_pairs, truncation=config.truncation
    )
    input_ids = encoded.input_ids
    attention_mask = (np.arange(input_ids.shape[1])[None, :] < encoded.lengths[:, None]).astype(np.int32)
    requests = []
    if TEXT_SIGNATURE in signatures:
        inputs = {"text": np.array([to_utf8(text) for text in texts], dtype=object)}
        if text_pairs is not None:
            inputs["text_pair"] = np.array([to_utf8(text) for text in text_pairs], dtype=object)
        requests.append((TEXT_SIGNATURE, inputs))
        requests.append((TEXT_SIGNATURE, {key: value[:1] for key, value in inputs.items()}))
    ids = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in [tensor.name.split(":")[0] for tensor in classifier.model.inputs]:
        ids["token_type_ids"] = encoded.token_type_ids if encoded.token_type_ids is not None else np.zeros_like(input_ids)
    requests.append((IDS_SIGNATURE, ids))
    return requests


def servable_op_names():
    """Return the op names an export may use: core TensorFlow ops and TensorFlow Text ops.

    TF Serving's model server links both. Core ops are those with a ``tf.raw_ops`` wrapper, and
    TensorFlow Text ops are those its op libraries register. Python-calling ops are left out.
    """
    import tensorflow_text
    from tensorflow.python.framework import op_def_registry

    core = {name for name in dir(tf.raw_ops) if not name.startswith("_")}
    text_ops = set()
    library_folder = os.path.join(os.path.dirname(tensorflow_text.__file__), "python", "ops")
    for library in sorted(glob.glob(os.path.join(library_folder, "*.so"))):
        # Importing tensorflow_text loaded these libraries already; loading one again only
        # returns its op wrappers.
        wrappers = tf.load_op_library(library)
        text_ops.update(name for name in dir(wrappers) if op_def_registry.get(name) is not None)
    return (core | text_ops) - PYTHON_OPS


def saved_model_op_names(saved_model_dir):
    """Return the op types used in a SavedModel's graphs and their function library."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as file:
        saved_model.ParseFromString(file.read())
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        functions = {function.signature.name for function in meta_graph.graph_def.library.function}
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
        # A node may call a library function by name; that is a call, not an op.
        ops -= functions
    return ops


def check_ops(saved_model_dir):
    """Raise ``ExportError`` naming every op in the SavedModel that TF Serving cannot run."""
    ops = saved_model_op_names(saved_model_dir)
    unservable = sorted(ops - servable_op_names())
    if unservable:
        raise ExportError(
            f"The SavedModel uses ops that are neither core TensorFlow nor TensorFlow Text ops, "
            f"or that call Python, so TF Serving cannot run them: {', '.join(unservable)}."
        )
    return ops


def _write_assets_extra(folder, classifier, run_dir, model_name, signatures, missing_reason):
    from tfpeft import __version__

    os.makedirs(os.path.join(folder, "assets.extra"), exist_ok=True)
    classifier.tokenizer.save_pretrained(os.path.join(folder, TOKENIZER_DIR))
    info = {
        "tfpeft_version": __version__,
        "run_dir": os.path.abspath(run_dir),
        "signatures": signatures,
        "text_signature_missing": missing_reason,
        "labels": classifier.labels,
        "max_seq_length": classifier.config.max_seq_length,
        "truncation": classifier.config.truncation,
        "text_pair_column": classifier.config.text_pair_column,
        "per_device_eval_batch_size": classifier.config.per_device_eval_batch_size,
    }
    with open(os.path.join(folder, INFO_FILE), "w", encoding="utf-8") as file:
        json.dump(info, file, indent=2, ensure_ascii=False)
        file.write("\n")
    if classifier.takes_pairs:
        texts, text_pairs = _warmup_texts(run_dir, classifier.config.max_seq_length, pairs=True)
    else:
        texts, text_pairs = _warmup_texts(run_dir, classifier.config.max_seq_length), None
    requests = _warmup_requests(classifier, texts, signatures, text_pairs)
    write_warmup_requests(os.path.join(folder, WARMUP_FILE), model_name, requests)


def export(run_dir, to, *, version=None, verbose=1):
    """Export a finished run as ``TO/<version>/``, a SavedModel that TF Serving serves.

    The SavedModel takes raw text in ``serving_default``, cleaned and tokenized in the graph
    exactly as training tokenized it, and token ids in ``serving_ids``. It loads in a process
    that imports only ``tensorflow`` and ``tensorflow_text``.

    Args:
        run_dir: str. A finished run folder.
        to: str. The model folder, ``MODELS_DIR/NAME``; TF Serving's ``--model_base_path``.
        version: int or None. The version folder to write; default one more than the highest
            existing version, or 1.
        verbose: int. 0 prints nothing.

    Returns:
        An ``ExportedModel``.

    Raises:
        ExportError: the version already exists, or the SavedModel uses an op TF Serving
            cannot run (nothing is left behind then).

    Example:

    >>> tfpeft.export("runs/bbc", "models/bbc").path
    'models/bbc/1'
    """
    from tfpeft.lora import remove_adapters
    from tfpeft.runs import load

    progress = Progress(verbose)
    to = os.path.normpath(to)
    version = _choose_version(to, version)
    progress.step(f"Loading the run {run_dir}")
    classifier = load(run_dir)
    # LoRA adapters are folded into the kernels and dropped, so the exported model is the base
    # architecture with no extra matrix products.
    remove_adapters(classifier.backbone, classifier.model)
    progress.step("Building the in-graph tokenizer")
    try:
        graph_tokenizer = _graph_tokenizer(classifier)
        missing_reason = None
        signatures = [TEXT_SIGNATURE, IDS_SIGNATURE]
    except GraphTokenizerError as error:
        graph_tokenizer = None
        missing_reason = f"{type(classifier.tokenizer).__name__} has no in-graph form: {error}"
        signatures = [IDS_SIGNATURE]
        message = (
            f"Exporting with the {IDS_SIGNATURE} signature only, because {missing_reason}. Clients "
            f"must tokenize texts with the tokenizer in {TOKENIZER_DIR}/ (after "
            "tfpeft.text_cleaning.clean_text) and send input_ids and attention_mask."
        )
        warnings.warn(message, TfpeftWarning, stacklevel=2)

    os.makedirs(to, exist_ok=True)
    # The name is not all digits, so a server watching `to` never takes it for a version.
    staging = tempfile.mkdtemp(prefix=f".tfpeft-export-{version}-", dir=to)
    try:
        labels_path = os.path.join(staging, LABELS_FILE)
        with open(labels_path, "w", encoding="utf-8") as file:
            file.write("".join(f"{name}\n" for name in classifier.labels))
        module, functions = _build_module(
            classifier.model, classifier.labels, graph_tokenizer, labels_path, classifier.takes_pairs
        )
        progress.step(f"Writing the SavedModel with signatures {', '.join(signatures)}")
        saved_model_dir = os.path.join(staging, "saved_model")
        tf.saved_model.save(module, saved_model_dir, signatures=functions)
        _write_assets_extra(saved_model_dir, classifier, run_dir, os.path.basename(to), signatures, missing_reason)
        ops = check_ops(saved_model_dir)
        progress.step(f"Checked {len(ops)} op types: all are core TensorFlow or TensorFlow Text ops")

        target = os.path.join(to, str(version))
        if os.path.exists(target):
            raise ExportError(f"Version {version} appeared in {to!r} while exporting; nothing was overwritten.")
        os.rename(saved_model_dir, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    progress.step(f"Exported version {version} to {target}")
    return ExportedModel(target, version, signatures, missing_reason)
