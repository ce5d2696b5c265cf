"""The Python functions behind ``tfpeft evaluate``, ``predict`` and ``inspect``."""

import logging
import os

import numpy as np

from tfpeft.errors import ConfigError, OutputDirError, RunFolderError
from tfpeft.progress import Progress

logger = logging.getLogger("tfpeft.commands")

EVAL_SPLITS = ("test", "validation", "train", "all")


def _evaluation_examples(classifier, dataset, test_file, test_data, split, text_column, label_column, encoding):
    from tfpeft.data import to_examples
    from tfpeft.data.loading import load_training_examples, read_data_file
    from tfpeft.training import load_splits

    config = classifier.config
    columns = dict(
        text_column=text_column or config.text_column,
        label_column=label_column or config.label_column,
    )
    if test_data is not None:
        return to_examples(
            test_data, text_pair_column=config.text_pair_column, on_empty_text=config.on_empty_text,
            name="test_data", **columns,
        )
    if test_file is not None:
        return read_data_file(config.replace(encoding=encoding or config.encoding, **columns), test_file)
    source = config.replace(dataset=dataset, train_file=None, validation_file=None, test_file=None)
    if split == "all":
        return load_training_examples(source)
    # The same seed and fractions as the run, so `test` is the run's own held-out test split.
    splits = load_splits(source)
    if split not in splits:
        raise ConfigError(f"The run's settings leave no {split!r} split of {dataset!r}; use --split all.")
    return splits[split]


def _check_evaluation_source(dataset, test_file, test_data, split):
    """Check the data arguments of ``evaluate`` before the slower model load."""
    given = [name for name, value in (("--dataset", dataset), ("--test-file", test_file), ("test_data", test_data))
             if value is not None]
    if len(given) != 1:
        got = f"got {' and '.join(given)}" if given else "got none"
        raise ConfigError(
            "Pass exactly one of --dataset (a built-in or tfds: name), --test-file (a file) or, "
            f"in Python, test_data; {got}."
        )
    if dataset is None and split is not None:
        raise ConfigError(
            f"--split {split} applies only to --dataset; {given[0]} is evaluated whole. Drop --split."
        )
    if split is not None and split not in EVAL_SPLITS:
        raise ConfigError(f"Invalid split {split!r}; use one of: {', '.join(EVAL_SPLITS)}.")


def evaluate(
    run_dir,
    *,
    dataset=None,
    test_file=None,
    test_data=None,
    split=None,
    name=None,
    text_column=None,
    label_column=None,
    encoding=None,
    overwrite=False,
    verbose=1,
):
    """Evaluate a run on other data and write ``RUN_DIR/eval/<name>/``.

    The folder gets ``results.json``, ``predictions.csv`` and the report files of
    ``tfpeft.write_run_report``. The run's own ``results.json`` is never touched. An existing
    ``eval/<name>`` folder is kept unless ``overwrite`` is set.

    Args:
        run_dir: str. A finished run folder.
        dataset: str or None. A built-in dataset; ``split`` picks the part, split with the run's
            seed and fractions (``test`` is the run's own test split).
        test_file: str or None. A CSV, TSV, JSON Lines or Parquet file, evaluated whole.
        test_data: a pandas DataFrame, dict of columns, ``(texts, labels)`` tuple or None,
            evaluated whole.
        split: str or None. ``test`` (the default), ``validation``, ``train`` or ``all``, for
            ``dataset`` only.
        name: str or None. The folder name under ``eval/``; default from the data.
        text_column, label_column, encoding: str or None. For ``test_file`` (the columns also
            for ``test_data``); default the run's.
        overwrite: bool. Replace an earlier ``eval/<name>`` folder.
        verbose: int. 0 prints nothing.

    Returns:
        The metrics dict written to ``eval/<name>/results.json``.
    """
    from tfpeft.data import encode_texts_in_chunks, make_dataset
    from tfpeft.evaluation import compute_metrics, cross_entropy, format_metrics, predict_logits, write_predictions
    from tfpeft.reports import write_run_report
    from tfpeft.runs import PREDICTIONS_FILE, RESULTS_FILE, load, write_json

    progress = Progress(verbose)
    _check_evaluation_source(dataset, test_file, test_data, split)
    if dataset is not None and split is None:
        split = "test"
    classifier = load(run_dir)
    examples = _evaluation_examples(
        classifier, dataset, test_file, test_data, split, text_column, label_column, encoding
    )
    if name is None:
        if dataset:
            name = f"{dataset.replace(':', '_').replace('/', '_')}_{split}"
        else:
            name = examples.name
    if name in ("", ".", "..") or "/" in name or (os.sep in name) or (os.altsep and os.altsep in name):
        raise ConfigError(
            f"Invalid --name {name!r}: use a plain folder name such as 'news_2024', without '/' "
            "or '..'. The evaluation is written to RUN_DIR/eval/NAME/."
        )
    out_dir = os.path.join(run_dir, "eval", name)
    if os.path.exists(out_dir) and not overwrite:
        raise OutputDirError(
            f"{out_dir!r} already contains an evaluation. Pass --name to write another one, or "
            "--overwrite to replace it."
        )

    from tfpeft.data.checks import check_known_labels

    check_known_labels(examples, classifier.labels, split="evaluation", train_source=f"run {run_dir}")
    label_ids = np.asarray(classifier.label_map.encode(examples.labels, examples.locations()))
    config = classifier.config
    tokenizing = progress.task("Tokenizing", len(examples), "texts")
    encoded = encode_texts_in_chunks(
        classifier.tokenizer, examples.texts, config.max_seq_length,
        text_pairs=examples.text_pairs, truncation=config.truncation, task=tokenizing,
    )
    progress.step(f"Evaluating on {len(examples)} examples of {examples.name}")
    batches = make_dataset(encoded, batch_size=config.per_device_eval_batch_size)
    logits = predict_logits(classifier.model, batches, callbacks=[progress.predict_callback("Predicting")])
    metrics = compute_metrics(label_ids, logits.argmax(axis=-1), classifier.label_map.names)
    metrics["loss"] = cross_entropy(logits, label_ids)
    metrics["data"] = {
        "dataset": dataset,
        "test_file": test_file,
        "split": split if dataset else None,
        "sha256": examples.fingerprint(),
    }

    os.makedirs(out_dir, exist_ok=True)
    write_predictions(
        os.path.join(out_dir, PREDICTIONS_FILE), examples.texts, label_ids, logits, classifier.labels,
        text_pairs=examples.text_pairs,
    )
    write_json(os.path.join(out_dir, RESULTS_FILE), metrics)
    write_run_report(out_dir, run_dir=run_dir)
    progress.block(format_metrics(metrics, title=name))
    progress.step(f"Evaluation saved to {out_dir}; see report.md there")
    return metrics


def _versions_note(path):
    """Return a note naming the export versions beside a version folder ``path``, or ""."""
    from tfpeft.export import existing_versions

    parent, name = os.path.split(os.path.normpath(str(path)))
    versions = existing_versions(parent) if name.isdigit() else []
    if not versions:
        return ""
    return f"; {parent!r} has versions {', '.join(str(version) for version in versions)}"


def predict(run_dir, texts, *, batch_size=None, text_pairs=None):
    """Return one dict per text: ``text``, ``label`` and ``probabilities`` by class name.

    ``run_dir`` is a run folder, a version folder written by ``tfpeft export``, a model folder
    of such versions (its highest version is used), or a loaded classifier. For a classifier
    trained on sentence pairs pass ``text_pairs``; each dict then has a ``text_pair`` too.
    """
    from tfpeft.export import INFO_FILE
    from tfpeft.exported import ExportedClassifier, find_export_folder
    from tfpeft.runs import CONFIG_FILE, check_batch_size, load

    # Checked before the slow model load; an exported model does not check it itself.
    check_batch_size(batch_size)
    if hasattr(run_dir, "predict_proba"):
        classifier = run_dir
    elif os.path.isfile(os.path.join(run_dir, CONFIG_FILE)):
        # A run folder is always the run, even with folders of digits inside it.
        classifier = load(run_dir)
    elif find_export_folder(run_dir) is not None:
        classifier = ExportedClassifier(find_export_folder(run_dir))
    else:
        try:
            classifier = load(run_dir)
        except RunFolderError as error:
            if os.path.isfile(os.path.join(run_dir, "saved_model.pb")):
                raise RunFolderError(
                    f"{run_dir!r} contains a SavedModel but no {INFO_FILE}, so it is not a complete "
                    "tfpeft export. Export the run again with `tfpeft export RUN_DIR --to MODELS_DIR/NAME`."
                ) from None
            raise RunFolderError(
                f"{error} tfpeft predict also takes a model exported by `tfpeft export`: its "
                f"version folder (MODELS_DIR/NAME/1) or the folder of its versions (MODELS_DIR/NAME){_versions_note(run_dir)}."
            ) from None
    if text_pairs is None:
        probabilities = classifier.predict_proba(texts, batch_size)
    else:
        probabilities = classifier.predict_proba(texts, batch_size, text_pairs=text_pairs)
    records = []
    for i, (text, row) in enumerate(zip(texts, probabilities)):
        record = {"text": text}
        if text_pairs is not None:
            record["text_pair"] = text_pairs[i]
        record["label"] = classifier.labels[int(row.argmax())]
        record["probabilities"] = {name: float(p) for name, p in zip(classifier.labels, row)}
        records.append(record)
    return records


def inspect(model="minilm", policy="last_n:2", *, pooling="mean", num_labels=2, frozen_dropout=False):
    """Return the trainable-parameter report of a policy on a backbone, without training.

    Example:

    >>> print(tfpeft.inspect("minilm", "last_n:2", num_labels=5).format())
    """
    from tfpeft.backbones import load_backbone
    from tfpeft.model import build_classifier
    from tfpeft.policies import apply_policy, parameter_report

    backbone = load_backbone(model)
    classifier = build_classifier(backbone, num_labels, pooling=pooling)
    apply_policy(backbone, policy, pooling=pooling, frozen_dropout=frozen_dropout)
    return parameter_report(classifier, backbone)
