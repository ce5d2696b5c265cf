"""Search the learning rate and the unfreeze depth of MiniLM on BBC News, then print the best trial.

Run with `.venv/bin/python examples/tune_bbc.py` after `make setup`. Six short trials on 600
articles take a few minutes on 2 CPU cores; `tfpeft tune` runs the same search from the shell:

    tfpeft tune --dataset bbc_news --output-dir runs/bbc-search --tuner random --max-trials 6 \
        --search learning_rate=log:3e-5:1e-3 --search unfreeze_depth=int:0:3 \
        --max-train-samples 600 --max-seq-length 64 --num-train-epochs 2
"""

import tfpeft

result = tfpeft.tune(
    dataset="bbc_news",
    output_dir="runs/bbc-search",
    max_train_samples=600,
    max_seq_length=64,
    num_train_epochs=2,
    space=["learning_rate=log:3e-5:1e-3", "unfreeze_depth=int:0:3"],
    options=tfpeft.TuningOptions(tuner="random", max_trials=6),
)
best = result.best_config
print(f"Best: policy {best.policy}, learning_rate {best.learning_rate:.2e}")
print(f"Train it: tfpeft train --config {result.tuning_dir}/best_config.toml --output-dir runs/bbc-best")
