"""Frozen backbones: tfpeft's feature cache and length bucketing against naive Keras training.

Each comparison runs both sides on the same data and settings, each in a fresh child process
so that its peak resident memory (``ru_maxrss`` of the child) is its own, and prints one table
row: the tfpeft figure, the naive figure, their ratio (how many times better tfpeft is), and
the peak memory of each side.

- ``head`` on BBC News: seconds per epoch after the first, feature cache vs the whole model
  with frozen variables (naive Keras freezing);
- ``last_n:2`` on BBC News: the same;
- grid search, ``unfreeze_depth`` in {0, 1, 2} x 2 learning rates, 3 epochs a trial, through
  ``tfpeft.tune``: total seconds with ``feature_cache`` on vs off (a subset of BBC News);
- tweets, ``last_n:2`` without the cache: real (non-padding) tokens per second of training in
  the last epoch, batches bucketed by length vs padded per batch (a subset of the tweets);
- ``head``: a whole 3-epoch run with the cache vs one inference pass of the classifier over
  the same texts (every split), the floor a frozen run cannot beat: the loop that computes
  the cache, alone. Both are timed from loading the backbone on, and the cache starts empty.

Run ``.venv/bin/python benchmarks/frozen_backbone.py`` (``make bench``) on an otherwise idle
machine; ``--help`` lists the sample caps. ``--quick`` runs every case on a tiny random BERT
and a few dozen texts to check that the script works; its figures mean nothing.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

# Benchmark the checkout this script sits in, even where another tfpeft is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GRID_SPACE = ["learning_rate=choice:0.0001,0.0003", "unfreeze_depth=choice:0,1,2"]
# Settings of every case that --quick shrinks; the rest of the arguments stay as given.
QUICK_SETTINGS = dict(
    max_train_samples=48, max_eval_samples=8, max_seq_length=32, epochs=2,
    grid_max_train_samples=32, grid_epochs=1, tweets_max_train_samples=96, tweets_epochs=2,
)


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


def _train_settings(args, dataset, max_train_samples):
    return dict(
        dataset=dataset, model_name_or_path=args.model, max_seq_length=args.max_seq_length,
        max_train_samples=max_train_samples, max_eval_samples=args.max_eval_samples,
        per_device_train_batch_size=32, save_strategy="no", seed=args.seed,
    )


def run_case(args):
    """Run one side of one comparison in this process; print its figures as one JSON line."""
    import numpy as np

    import tfpeft
    from tfpeft import training
    from tfpeft.features import Cut, compute_features

    figures = {}
    with tempfile.TemporaryDirectory() as folder:
        # Every case starts with an empty feature cache, so cached figures include computing it.
        os.environ["TFPEFT_CACHE_DIR"] = os.path.join(folder, "cache")
        if args.case == "inference":
            settings = _train_settings(args, args.dataset, args.max_train_samples)
            start = time.perf_counter()
            backbone = tfpeft.load_backbone(args.model)
            config = tfpeft.TrainingConfig(**settings)
            data = training.prepare_data(config, backbone.tokenizer)
            model = tfpeft.build_classifier(backbone, data.label_map.num_labels)
            # The leanest pass tfpeft has: one traced function over batches of 64 in order,
            # which runs faster than Keras' model.predict over the same texts.
            cut = Cut("pooled", backbone.num_blocks)
            for encoded in data.encoded.values():
                compute_features(model, backbone, cut, encoded, 64, data.token_type_ids)
            figures["seconds"] = time.perf_counter() - start
        elif args.case == "grid":
            start = time.perf_counter()
            result = tfpeft.tune(
                output_dir=os.path.join(folder, "search"), num_train_epochs=args.grid_epochs,
                feature_cache=args.cache == "on", space=GRID_SPACE,
                options=tfpeft.TuningOptions(tuner="grid"), verbose=0,
                **_train_settings(args, args.dataset, args.grid_max_train_samples),
            )
            figures["seconds"] = time.perf_counter() - start
            figures["trials"] = len(result.trials)
        else:
            timer = _epoch_timer()
            original = training._callbacks

            def with_timer(*positional, **keywords):
                callbacks, evaluation, epoch_log = original(*positional, **keywords)
                # First, so that the evaluation after each epoch is not counted as training.
                return [timer] + callbacks, evaluation, epoch_log

            training._callbacks = with_timer
            tweets = args.case == "tweets"
            settings = _train_settings(
                args, args.tweets_dataset if tweets else args.dataset,
                args.tweets_max_train_samples if tweets else args.max_train_samples,
            )
            start = time.perf_counter()
            result = tfpeft.train(
                output_dir=os.path.join(folder, "run"), policy=args.policy,
                num_train_epochs=args.tweets_epochs if tweets else args.epochs,
                feature_cache=args.cache == "on", bucket_by_length=args.bucket == "on",
                eval_strategy="no", verbose=0, **settings,
            )
            figures["seconds"] = time.perf_counter() - start
            figures["epoch_seconds"] = timer.seconds
            figures["later_epoch_seconds"] = float(np.mean(timer.seconds[1:])) if len(timer.seconds) > 1 else None
            figures["train_seconds"] = result.results["train_seconds"]
            if tweets:
                figures["real_tokens"] = _real_tokens(args, settings)
    # ru_maxrss is in KiB on Linux.
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("BENCHMARK " + json.dumps(figures))


def _real_tokens(args, settings):
    """Return the real tokens in one epoch of the training split (special tokens included)."""
    import tfpeft
    from tfpeft.training import prepare_data

    backbone = tfpeft.load_backbone(args.model)
    config = tfpeft.TrainingConfig(**settings)
    return int(prepare_data(config, backbone.tokenizer).encoded["train"].lengths.sum())


def _child(args, **case):
    command = [sys.executable, os.path.abspath(__file__), "--child"]
    for name, value in {**vars(args), **case}.items():
        if name in ("child", "quick") or value is None:
            continue
        command += [f"--{name.replace('_', '-')}", str(value)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-3000:] + completed.stderr[-6000:])
        raise SystemExit(f"The benchmark case {case} failed with exit status {completed.returncode}; its output is above.")
    line = [line for line in completed.stdout.splitlines() if line.startswith("BENCHMARK ")][-1]
    return json.loads(line[len("BENCHMARK "):])


def _row(name, data, ours, naive, unit, *, higher_is_better=False, ours_rss=None, naive_rss=None):
    ratio = ours / naive if higher_is_better else naive / ours
    print(
        f"| {name} | {data} | {ours:.3f} {unit} | {naive:.3f} {unit} | {ratio:.2f}x | "
        f"{ours_rss:.0f} MiB | {naive_rss:.0f} MiB |",
        flush=True,
    )


def _memory_total():
    try:
        with open("/proc/meminfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _print_header(args):
    """Print the command, the machine, the versions and the date, for docs/benchmarks.md."""
    from tfpeft.training import library_versions

    versions = ", ".join(f"{name} {version}" for name, version in library_versions().items())
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    python = os.path.relpath(sys.executable)
    print(f"Command: {' '.join([python if not python.startswith('..') else sys.executable] + sys.argv)}")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'unknown processor'}), "
        f"{_memory_total()} memory, {platform.platform()}; load average at start {load}"
    )
    print(f"Versions: Python {platform.python_version()}, {versions}")
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"Backbone: {args.model}{' (a tiny random BERT: --quick)' if args.quick else ''}\n", flush=True)


def _write_quick_backbone(folder):
    """Write a random 2-block BERT with MiniLM's tokenizer to ``folder``, for --quick."""
    import tf_keras
    from transformers import AutoTokenizer, BertConfig, TFBertModel

    from tfpeft.backbones import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    tokenizer.save_pretrained(folder)
    tf_keras.utils.set_random_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )
    model = TFBertModel(config)
    model(model.dummy_inputs)
    model.save_pretrained(folder)
    return folder


def _epochs(count):
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def _samples(count):
    return "all" if count is None else str(count)


def run_benchmarks(args):
    _print_header(args)
    bbc = f"{args.dataset}, {_samples(args.max_train_samples)} train texts, {args.max_seq_length} tokens, {args.epochs} epochs"
    print("| benchmark | data | tfpeft | naive | ratio | tfpeft peak RSS | naive peak RSS |")
    print("|---|---|---|---|---|---|---|", flush=True)

    head_run = None
    for policy in ("head", "last_n:2"):
        ours = _child(args, case="train", policy=policy, cache="on", bucket="on")
        naive = _child(args, case="train", policy=policy, cache="off", bucket="on")
        _row(
            f"`{policy}`: seconds per epoch after the first (cache vs naive)", bbc,
            ours["later_epoch_seconds"], naive["later_epoch_seconds"], "s",
            ours_rss=ours["peak_rss_mib"], naive_rss=naive["peak_rss_mib"],
        )
        if policy == "head":
            head_run = ours

    grid = (
        f"{args.dataset}, {_samples(args.grid_max_train_samples)} train texts, {args.max_seq_length} tokens, "
        f"6 trials of {_epochs(args.grid_epochs)}"
    )
    ours = _child(args, case="grid", cache="on")
    naive = _child(args, case="grid", cache="off")
    _row(
        "grid search, unfreeze_depth 0-2 x 2 learning rates: total seconds (cache on vs off)", grid,
        ours["seconds"], naive["seconds"], "s", ours_rss=ours["peak_rss_mib"], naive_rss=naive["peak_rss_mib"],
    )

    tweets = (
        f"{args.tweets_dataset}, {_samples(args.tweets_max_train_samples)} train texts, {args.max_seq_length} "
        f"tokens, last of {args.tweets_epochs} epochs"
    )
    bucketed = _child(args, case="tweets", policy="last_n:2", cache="off", bucket="on")
    padded = _child(args, case="tweets", policy="last_n:2", cache="off", bucket="off")
    _row(
        "`last_n:2`: real tokens per second (bucketed vs per-batch padding)", tweets,
        bucketed["real_tokens"] / bucketed["epoch_seconds"][-1], padded["real_tokens"] / padded["epoch_seconds"][-1],
        "tok/s", higher_is_better=True, ours_rss=bucketed["peak_rss_mib"], naive_rss=padded["peak_rss_mib"],
    )

    floor = _child(args, case="inference", policy="head", cache="off", bucket="off")
    print(
        f"| `head`: whole {args.epochs}-epoch run (cache) vs one inference pass over the same texts | {bbc} | "
        f"{head_run['seconds']:.3f} s | {floor['seconds']:.3f} s (floor) | run / pass = "
        f"{head_run['seconds'] / floor['seconds']:.2f} | {head_run['peak_rss_mib']:.0f} MiB | "
        f"{floor['peak_rss_mib']:.0f} MiB |"
    )
    print(
        "\nratio: naive / tfpeft for seconds, tfpeft / naive for tokens per second; "
        "peak RSS: ru_maxrss of each side's own process."
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm", help="Backbone folder or alias (default: minilm).")
    parser.add_argument("--dataset", default="bbc_news", help="Dataset of the epoch-time and grid comparisons.")
    parser.add_argument("--tweets-dataset", default="tweets", help="Dataset of the bucketing comparison.")
    parser.add_argument("--max-train-samples", type=int, help="Training texts of the head and last_n:2 cases (default: all).")
    parser.add_argument("--max-eval-samples", type=int, default=64, help="Validation and test texts of every case (default: 64).")
    parser.add_argument("--max-seq-length", type=int, default=128, help="Tokens per text (default: 128).")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of the head and last_n:2 runs (default: 3).")
    parser.add_argument("--grid-max-train-samples", type=int, default=600, help="Training texts of the grid search (default: 600).")
    parser.add_argument("--grid-epochs", type=int, default=3, help="Epochs of each grid trial (default: 3).")
    parser.add_argument("--tweets-max-train-samples", type=int, default=4000, help="Training tweets (default: 4000).")
    parser.add_argument("--tweets-epochs", type=int, default=2, help="Epochs of the tweets runs; the last is timed (default: 2).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of every run (default: 42).")
    parser.add_argument("--quick", action="store_true", help="Run every case on a tiny random BERT and a few dozen texts, to check the script.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_case(args)
        return
    if not args.quick:
        run_benchmarks(args)
        return
    for name, value in QUICK_SETTINGS.items():
        setattr(args, name, value)
    with tempfile.TemporaryDirectory() as folder:
        args.model = _write_quick_backbone(os.path.join(folder, "tiny_bert"))
        run_benchmarks(args)


if __name__ == "__main__":
    main()
