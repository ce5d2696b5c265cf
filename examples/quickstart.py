"""Fine-tune all-MiniLM-L6-v2 on BBC News step by step, the way a notebook would.

Run with `.venv/bin/python examples/quickstart.py` after `make setup` (about 2 minutes on
2 CPU cores). `tfpeft.train` does the same in one call and also saves a run folder.
"""

import tfpeft  # first, so that tf.keras is tf_keras

import tf_keras

config = tfpeft.TrainingConfig(dataset="bbc_news", num_train_epochs=2, max_seq_length=128)

# A pretrained backbone with the last 2 of its 6 blocks unfrozen, and a 5-class head.
backbone = tfpeft.load_backbone("minilm")
data = tfpeft.prepare_data(config, backbone.tokenizer)
model = tfpeft.build_classifier(backbone, data.label_map.num_labels, pooling="mean")
tfpeft.apply_policy(backbone, "last_n:2")
print(tfpeft.parameter_report(model, backbone).format())

# Keras reads `trainable` at compile time, so compile after applying the policy.
train_batches = data.dataset("train", batch_size=16, shuffle=True, seed=config.seed)
tfpeft.compile_classifier(model, config, total_steps=len(train_batches) * config.num_train_epochs)
model.fit(
    train_batches,
    validation_data=data.dataset("validation", batch_size=64),
    epochs=config.num_train_epochs,
    callbacks=[tf_keras.callbacks.TensorBoard("runs/quickstart-logs")],
)

metrics, _ = tfpeft.evaluate_model(model, data, "test", batch_size=64)
print(f"test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
