"""Resident memory after each trial of a 6-trial search on MiniLM and BBC News.

Memory must stay flat across trials: the search keeps the tokenized data and one classifier,
and resets its weights before each trial instead of loading the backbone again. This prints
the resident set size (RSS) after each trial and the ratio of trial 6 to trial 3.

Run: .venv/bin/python benchmarks/tuning_memory.py [--max-train-samples 400]
"""

import argparse
import json
import os
import tempfile

import tfpeft


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-train-samples", type=int, default=400, help="Training articles per trial.")
    parser.add_argument("--max-seq-length", type=int, default=128, help="Tokens per article.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        result = tfpeft.tune(
            dataset="bbc_news",
            model_name_or_path="minilm",
            output_dir=os.path.join(folder, "search"),
            max_train_samples=args.max_train_samples,
            max_eval_samples=100,
            max_seq_length=args.max_seq_length,
            num_train_epochs=1,
            # Grid order: the first setting varies slowest, so trials 3 and 6 both unfreeze 2 blocks.
            space=["learning_rate=choice:0.0001,0.0003", "unfreeze_depth=choice:0,1,2"],
            options=tfpeft.TuningOptions(tuner="grid"),
            verbose=0,
        )
        memory = []
        for row in result.trials:
            path = os.path.join(result.tuning_dir, "trials", f"trial_{row['trial_id']}", "summary.json")
            with open(path, encoding="utf-8") as file:
                memory.append(json.load(file)["resident_memory_mb"])

    print("| trial | unfreeze_depth | learning_rate | RSS after trial (MiB) |")
    print("|---|---|---|---|")
    for number, (row, rss) in enumerate(zip(result.trials, memory), start=1):
        print(f"| {number} | {row['unfreeze_depth']} | {row['learning_rate']} | {rss:.0f} |")
    ratio = memory[5] / memory[2]
    print(f"\ntrial 6 / trial 3 resident memory: {ratio:.3f} (target: below 1.10)")


if __name__ == "__main__":
    main()
