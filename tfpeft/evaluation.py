"""Metrics from scikit-learn over the full set of predictions, and the tables that show them."""

import csv

import numpy as np


def softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def cross_entropy(logits, label_ids):
    """Return the mean sparse categorical cross-entropy of float logits, as Keras computes it."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(label_ids)), label_ids].mean())


def compute_metrics(label_ids, predicted_ids, label_names):
    """Return accuracy, macro F1, macro precision, macro recall and a per-class report.

    Every class of ``label_names`` is reported, also one absent from ``label_ids``; a metric
    whose denominator is zero counts as 0, as scikit-learn's ``zero_division=0`` sets it.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = list(range(len(label_names)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        label_ids, predicted_ids, labels=labels, average="macro", zero_division=0
    )
    per_precision, per_recall, per_f1, support = precision_recall_fscore_support(
        label_ids, predicted_ids, labels=labels, average=None, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(per_precision[i]),
            "recall": float(per_recall[i]),
            "f1": float(per_f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }
    return {
        "accuracy": float(accuracy_score(label_ids, predicted_ids)),
        "macro_f1": float(f1),
        "macro_precision": float(precision),
        "macro_recall": float(recall),
        "num_examples": int(len(label_ids)),
        "per_class": per_class,
    }


def format_metrics(metrics, title="test"):
    """Return a short text table of the overall and per-class metrics."""
    lines = [
        f"{title} ({metrics['num_examples']} examples): accuracy {metrics['accuracy']:.4f}, "
        f"macro F1 {metrics['macro_f1']:.4f}, macro precision {metrics['macro_precision']:.4f}, "
        f"macro recall {metrics['macro_recall']:.4f}"
    ]
    width = max(len(name) for name in metrics["per_class"])
    lines.append(f"{'class':<{width}}  precision  recall      f1  support")
    for name, row in metrics["per_class"].items():
        lines.append(
            f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}"
            f"  {row['support']:7d}"
        )
    return "\n".join(lines)


def predict_logits(model, dataset, callbacks=None):
    """Return the float32 logits of ``model`` over every batch of ``dataset``."""
    return np.asarray(model.predict(dataset, verbose=0, callbacks=callbacks), dtype=np.float32)


def write_predictions(path, texts, label_ids, logits, label_names, text_pairs=None):
    """Write one CSV row per example: text, true label, predicted label, each class probability.

    ``label_ids`` may be None for unlabelled texts; the ``label`` column is then empty. For
    sentence pairs a ``text_pair`` column follows ``text``.
    """
    probabilities = softmax(logits)
    predicted = probabilities.argmax(axis=-1)
    text_header = ["text"] if text_pairs is None else ["text", "text_pair"]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(text_header + ["label", "predicted_label"] + [f"prob_{name}" for name in label_names])
        for i, text in enumerate(texts):
            true_name = label_names[label_ids[i]] if label_ids is not None else ""
            text_fields = [text] if text_pairs is None else [text, text_pairs[i]]
            row = text_fields + [true_name, label_names[predicted[i]]]
            writer.writerow(row + [f"{p:.6f}" for p in probabilities[i]])
