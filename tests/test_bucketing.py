"""Length bucketing in the tf.data pipeline: same examples, less padding, seeded order."""

import logging

import numpy as np

from tfpeft.data import EncodedTexts, make_dataset
from tfpeft.data.pipeline import count_batches, length_boundaries, padding_share

PAD = 0


def _encoded(num_texts=203, seed=0):
    """Texts whose first token is their row number + 1, so a batch row tells its example."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 41, size=num_texts).astype(np.int32)
    ids = np.full((num_texts, int(lengths.max())), PAD, dtype=np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = 1000 + rng.integers(1, 50, size=length)
        ids[row, 0] = row + 1
    return EncodedTexts(ids, lengths, PAD)


def _epoch(dataset):
    """Return the (row, label, batch size) of every example of one pass, and the batches."""
    seen, batches = [], []
    for features, labels in dataset:
        ids, mask = features["input_ids"].numpy(), features["attention_mask"].numpy()
        batches.append(ids[:, 0].tolist())
        for row_ids, row_mask, label in zip(ids, mask, labels.numpy()):
            length = int(row_mask.sum())
            # The mask covers exactly the real tokens, and padding follows them.
            assert row_mask[:length].all() and not row_mask[length:].any()
            assert (row_ids[length:] == PAD).all()
            seen.append((int(row_ids[0]) - 1, int(label), length))
    return seen, batches


def test_length_boundaries_by_hand():
    assert length_boundaries([5] * 10) == []
    # Quantiles of 1..8 at 1/4, 2/4, 3/4 ("higher"): 3, 5, 7; a boundary ends a bucket before it.
    assert length_boundaries(list(range(1, 9)), num_buckets=4) == [4, 6, 8]
    assert count_batches(list(range(1, 9)), 3, [4, 6, 8]) == 4  # buckets of 3, 2, 2, 1
    assert count_batches(list(range(1, 9)), 3) == 3


def test_bucketing_each_example_once_less_padding():
    encoded = _encoded()
    labels = np.arange(len(encoded)) % 3
    bucketed = make_dataset(encoded, labels, batch_size=16, shuffle=True, seed=7, bucket_by_length=True)
    padded = make_dataset(encoded, labels, batch_size=16, shuffle=True, seed=7)

    for _ in range(2):  # every epoch, not only the first
        seen, batches = _epoch(bucketed)
        assert sorted(row for row, _, _ in seen) == list(range(len(encoded)))
        assert all(label == row % 3 and length == encoded.lengths[row] for row, label, length in seen)
        assert len(batches) == count_batches(encoded.lengths, 16, length_boundaries(encoded.lengths))
        assert max(len(batch) for batch in batches) == 16

    # The same examples, with well under the padding of per-batch padding.
    bucketed_share, padded_share = padding_share(bucketed), padding_share(padded)
    assert padded_share > 0.3
    assert bucketed_share < padded_share / 3


def test_bucketing_seeded_reshuffled():
    encoded = _encoded()
    labels = np.zeros(len(encoded), dtype=np.int32)

    def batches(seed):
        dataset = make_dataset(encoded, labels, batch_size=16, shuffle=True, seed=seed, bucket_by_length=True)
        return _epoch(dataset)[1], _epoch(dataset)[1]

    first, second = batches(7)
    assert batches(7) == (first, second)
    assert first != second
    assert batches(8)[0] != first


def test_training_logs_padding_share(tiny_bert_dir, toy_csv, tmp_path, caplog):
    import tfpeft

    with caplog.at_level(logging.INFO, logger="tfpeft.training"):
        result = tfpeft.train(
            model_name_or_path=tiny_bert_dir, train_file=toy_csv, output_dir=str(tmp_path / "run"),
            num_train_epochs=1, policy="head", max_seq_length=32, per_device_train_batch_size=8, verbose=0,
            eval_strategy="no", save_strategy="no",
        )
    # The temporary folder's name contains "padding" too, so match the whole phrase.
    lines = [r.getMessage() for r in caplog.records if "of token positions are padding" in r.getMessage()]
    assert len(lines) == 1
    assert "bucketed by length" in lines[0]
    assert result.results["epochs_completed"] == 1
