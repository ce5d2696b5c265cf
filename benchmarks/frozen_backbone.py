"""Frozen backbones: tfpeft's feature cache and length bucketing against naive Keras training.

Each comparison runs both sides on the same data and settings, each in a fresh process so that
its peak resident memory (RSS) is its own, and prints the tfpeft figure, the naive figure and
their ratio:

- head-only, BBC News: seconds per epoch after the first, feature cache vs the full model
  with frozen variables (naive Keras freezing);
- last_n:2, BBC News: the same;
- head-only 3-epoch run with the cache vs one inference pass of the backbone over the same
  texts, the floor a frozen run cannot beat;
- tweets, last_n:2 without the cache: real (non-padding) tokens per second of training,
  batches bucketed by length vs padded per batch.

Run: .venv/bin/python benchmarks/frozen_backbone.py [--max-train-samples N] [--max-seq-length L]
(`make bench` runs it with the defaults: all of BBC News, 128 tokens, 3 epochs).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

# Benchmark the checkout this script sits in, even where another tfpeft is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _epoch_timer():
    import tf_keras

    class EpochTimer(tf_keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def run_case(args):
    """Run one side of one comparison in this process; print its figures as JSON."""
    import numpy as np

    import tfpeft
    from tfpeft import training

    timer = _epoch_timer()
    original = training._callbacks

    def with_timer(*positional, **keywords):
        callbacks, evaluation, epoch_log = original(*positional, **keywords)
        # First, so that the evaluation after each epoch is not counted as training.
        return [timer] + callbacks, evaluation, epoch_log

    training._callbacks = with_timer
    settings = dict(
        dataset=args.dataset, model_name_or_path=args.model, max_seq_length=args.max_seq_length,
        max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
        per_device_train_batch_size=32, save_strategy="no", verbose=0,
    )
    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        if args.case == "inference":
            # One forward pass of the whole classifier over the training texts, timed like the
            # whole training run: from loading the backbone on.
            start = time.perf_counter()
            backbone = tfpeft.load_backbone(args.model)
            config = tfpeft.TrainingConfig(**{k: v for k, v in settings.items() if k != "verbose"})
            data = training.prepare_data(config, backbone.tokenizer)
            model = tfpeft.build_classifier(backbone, data.label_map.num_labels)
            model.predict(data.dataset("train", 64, with_labels=False), verbose=0)
            figures["seconds"] = time.perf_counter() - start
        else:
            os.environ["TFPEFT_CACHE_DIR"] = os.path.join(folder, "cache")
            start = time.perf_counter()
            result = tfpeft.train(
                output_dir=os.path.join(folder, "run"), policy=args.policy, num_train_epochs=args.epochs,
                feature_cache=args.cache == "on", bucket_by_length=args.bucket == "on",
                eval_strategy="no", **settings,
            )
            figures["seconds"] = time.perf_counter() - start
            figures["epoch_seconds"] = timer.seconds
            figures["later_epoch_seconds"] = float(np.mean(timer.seconds[1:])) if len(timer.seconds) > 1 else None
            figures["train_seconds"] = result.results["train_seconds"]
    # ru_maxrss is in KiB on Linux.
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("BENCHMARK " + json.dumps(figures))


def _child(args, **case):
    command = [sys.executable, __file__, "--child"]
    options = {**vars(args), **case}
    for name, value in options.items():
        if name in ("child",) or value is None:
            continue
        command += [f"--{name.replace('_', '-')}", str(value)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    line = [line for line in output.splitlines() if line.startswith("BENCHMARK ")][-1]
    return json.loads(line[len("BENCHMARK "):])


def _row(name, ours, naive, unit, higher_is_better=False):
    ratio = ours / naive if higher_is_better else naive / ours
    print(f"| {name} | {ours:.3f} {unit} | {naive:.3f} {unit} | {ratio:.2f}x |")


def _rss_row(name, ours, naive):
    print(f"| {name}: peak RSS | {ours['peak_rss_mib']:.0f} MiB | {naive['peak_rss_mib']:.0f} MiB | {naive['peak_rss_mib'] / ours['peak_rss_mib']:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="Backbone folder or alias (default: minilm).")
    parser.add_argument("--dataset", default="bbc_news", help="Dataset of the epoch-time comparisons.")
    parser.add_argument("--tweets-dataset", default="tweets", help="Dataset of the bucketing comparison.")
    parser.add_argument("--max-train-samples", type=int, help="Training texts (default: all).")
    parser.add_argument("--max-eval-samples", type=int, default=64, help="Validation and test texts.")
    parser.add_argument("--max-seq-length", type=int, default=128, help="Tokens per text.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of each training run.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_case(args)
        return
    base = dict(case="train", bucket="on")

    print("| benchmark | tfpeft | naive | ratio |")
    print("|---|---|---|---|")
    for policy in ("head", "last_n:2"):
        ours = _child(args, **base, policy=policy, cache="on")
        naive = _child(args, **base, policy=policy, cache="off")
        _row(f"{policy}: seconds per epoch after the first", ours["later_epoch_seconds"], naive["later_epoch_seconds"], "s")
        _rss_row(policy, ours, naive)
        if policy == "head":
            head_run = ours
    floor = _child(args, case="inference", policy="head", cache="off", bucket="off")
    ratio = head_run["seconds"] / floor["seconds"]
    print(
        f"| head: whole {args.epochs}-epoch run vs one inference pass | {head_run['seconds']:.3f} s | "
        f"{floor['seconds']:.3f} s (floor) | run / pass = {ratio:.2f} |"
    )

    tweets = dict(vars(args), dataset=args.tweets_dataset)
    tweets_args = argparse.Namespace(**tweets)
    bucketed = _child(tweets_args, case="train", policy="last_n:2", cache="off", bucket="on")
    padded = _child(tweets_args, case="train", policy="last_n:2", cache="off", bucket="off")
    real_tokens = _real_tokens(tweets_args)
    _row(
        "tweets: real tokens per second (bucketed vs per-batch padding)",
        real_tokens / min(bucketed["epoch_seconds"]), real_tokens / min(padded["epoch_seconds"]), "tok/s",
        higher_is_better=True,
    )
    _rss_row("tweets", bucketed, padded)


def _real_tokens(args):
    """Return the real tokens in one epoch of the training split (special tokens included)."""
    import tfpeft
    from tfpeft.training import prepare_data

    backbone = tfpeft.load_backbone(args.model)
    config = tfpeft.TrainingConfig(
        dataset=args.dataset, model_name_or_path=args.model, max_seq_length=args.max_seq_length,
        max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
    )
    return int(prepare_data(config, backbone.tokenizer).encoded["train"].lengths.sum())


if __name__ == "__main__":
    main()
