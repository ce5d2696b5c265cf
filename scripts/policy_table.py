"""Train one classifier per freezing policy and print a Markdown table of the results.

Each policy gets its own learning rate. By default a short search trains one epoch for each of
three rates from that policy's grid (``LEARNING_RATE_GRIDS``) and keeps the rate with the best
validation macro F1. ``--no-search`` takes the middle rate of the grid instead. The chosen rate
then trains ``--epochs`` epochs, and the table reports test accuracy, macro F1, trainable
parameters and training time. The time is ``results.json``'s ``train_seconds``, which leaves
out data loading, tokenizing and evaluation.

The table in docs/policies.md comes from this command, on a quiet machine:

    .venv/bin/python scripts/policy_table.py --model minilm --dataset bbc_news \\
        --policies head,last_n:2,bitfit,full --epochs 3 --output docs/policy_table.md

A quick check that the script works (a few minutes on 2 CPU cores):

    .venv/bin/python scripts/policy_table.py --max-train-samples 50 --max-eval-samples 20 \\
        --epochs 1 --max-seq-length 32 --no-search
"""

import argparse
import os
import platform
import re
import sys
import tempfile

import tfpeft
from tfpeft.policies import parse_policy
from tfpeft.progress import Progress

# Learning-rate grids per policy kind, low to high: a frozen backbone under a linear head
# takes rates near logistic regression's, and the more of the backbone trains, the lower the
# rate that keeps the pretrained weights useful.
LEARNING_RATE_GRIDS = {
    "head": (3e-3, 1e-2, 3e-2),
    "bitfit": (3e-4, 1e-3, 3e-3),
    "layernorm": (3e-4, 1e-3, 3e-3),
    "last_n": (5e-5, 1e-4, 3e-4),
    "pattern": (5e-5, 1e-4, 3e-4),
    "embeddings_frozen": (2e-5, 5e-5, 1e-4),
    "full": (2e-5, 5e-5, 1e-4),
    "lora": (3e-4, 1e-3, 3e-3),
}


def split_policies(text):
    """Split ``--policies`` at commas, except those inside a policy such as ``lora:r=8,alpha=16``."""
    from tfpeft.lora import LORA_KEYS

    pieces = re.split(r",(?!(?:" + "|".join(LORA_KEYS) + r")=)", text)
    return [piece.strip() for piece in pieces if piece.strip()]


def folder_name(policy):
    return re.sub(r"[^\w.=-]", "_", policy)


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="Backbone folder, Hub name or alias (default: minilm).")
    parser.add_argument("--dataset", default="bbc_news", help="Built-in dataset (default: bbc_news).")
    parser.add_argument("--policies", default="head,last_n:2,bitfit,full", help="Comma-separated policies.")
    parser.add_argument("--epochs", type=int, default=3, help="Epochs of the final run of each policy (default: 3).")
    parser.add_argument("--search-epochs", type=int, default=1, help="Epochs of each search trial (default: 1).")
    parser.add_argument("--no-search", action="store_true", help="Use the middle rate of each grid, without a search.")
    parser.add_argument("--max-seq-length", type=int, default=128, help="Tokens per text (default: 128).")
    parser.add_argument("--batch-size", type=int, default=16, help="Training batch size (default: 16).")
    parser.add_argument("--max-train-samples", type=int, help="Cap the training examples, for a quick check.")
    parser.add_argument("--max-eval-samples", type=int, help="Cap the validation and test examples each.")
    parser.add_argument("--seed", type=int, default=42, help="Split, shuffle and head seed (default: 42).")
    parser.add_argument("--work-dir", help="Folder for the run folders (default: a new temporary folder).")
    parser.add_argument("--output", help="Also write the Markdown table to this file.")
    return parser.parse_args(argv)


def learning_rate_grid(policy):
    return LEARNING_RATE_GRIDS[parse_policy(policy).kind]


def train_one(args, policy, learning_rate, epochs, output_dir):
    return tfpeft.train(
        model_name_or_path=args.model,
        dataset=args.dataset,
        policy=policy,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        max_seq_length=args.max_seq_length,
        per_device_train_batch_size=args.batch_size,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        seed=args.seed,
        output_dir=output_dir,
        verbose=0,
    ).results


def choose_learning_rate(args, policy, work_dir, progress):
    """Return ``(rate, how)``: the grid rate with the best validation macro F1, or the middle one."""
    grid = learning_rate_grid(policy)
    if args.no_search:
        return grid[len(grid) // 2], "middle of grid"
    scores = {}
    for rate in grid:
        output_dir = os.path.join(work_dir, f"search-{folder_name(policy)}-{rate:g}")
        results = train_one(args, policy, rate, args.search_epochs, output_dir)
        scores[rate] = results["validation"]["macro_f1"]
        progress.step(f"{policy}: learning rate {rate:g} gives validation macro F1 {scores[rate]:.4f}")
    best = max(grid, key=lambda rate: (scores[rate], -rate))
    chosen_by = f"best of {', '.join(f'{rate:g}' for rate in grid)}"
    # A best rate at either end of the grid may not be the best rate overall.
    if best in (grid[0], grid[-1]):
        chosen_by += " (grid edge)"
    return best, chosen_by


def markdown_cell(text):
    """Escape the pipes in ``text`` (``target_modules=query|value``) so the table keeps its columns."""
    return text.replace("|", "\\|")


def format_table(rows):
    lines = [
        "| policy | learning rate | chosen by | trainable params | trainable % | test accuracy | test macro F1 | train time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{markdown_cell(row['policy'])}` | {row['learning_rate']:g} | {row['chosen_by']} | {row['trainable_params']:,} "
            f"| {row['trainable_percent']:.2f} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} "
            f"| {row['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_arguments(argv)
    progress = Progress(1, stream=sys.stderr)
    policies = split_policies(args.policies)
    for policy in policies:
        learning_rate_grid(policy)  # fail on a typo before any training
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="policy_table-")
    progress.step(f"Run folders go to {work_dir}")

    rows = []
    for policy in policies:
        learning_rate, chosen_by = choose_learning_rate(args, policy, work_dir, progress)
        output_dir = os.path.join(work_dir, f"final-{folder_name(policy)}")
        results = train_one(args, policy, learning_rate, args.epochs, output_dir)
        rows.append({
            "policy": policy,
            "learning_rate": learning_rate,
            "chosen_by": chosen_by,
            "trainable_params": results["trainable_params"],
            "trainable_percent": results["trainable_percent"],
            "accuracy": results["test"]["accuracy"],
            "macro_f1": results["test"]["macro_f1"],
            "train_seconds": results["train_seconds"],
        })
        progress.step(f"{policy}: test accuracy {results['test']['accuracy']:.4f} in {results['train_seconds']:.0f} s")

    table = format_table(rows)
    command = " ".join(["scripts/policy_table.py", *(argv if argv is not None else sys.argv[1:])])
    footer = (
        f"\n\n{args.model} on {args.dataset}, {args.epochs} epoch{'s' if args.epochs != 1 else ''}, "
        f"max_seq_length {args.max_seq_length}, "
        f"batch {args.batch_size}, seed {args.seed}; {platform.machine()} with {os.cpu_count()} CPUs. "
        f"Command: `{command}`"
    )
    print(table + footer)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(table + footer + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
