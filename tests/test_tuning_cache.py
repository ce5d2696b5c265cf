"""A search on cached features: each cut computed once, deeper freezes derived, same trials as without."""

import json
import logging
import os

import numpy as np
import pytest

import tfpeft
from tfpeft.tuning import TuningOptions, _Search

SPACE = ["unfreeze_depth=choice:0,1,2", "learning_rate=choice:0.01"]


def _search(folder, csv, output_dir, feature_cache, monkeypatch, cache_dir):
    """Run a 3-trial grid search; return its trial rows and each trial's final weights by depth."""
    monkeypatch.setenv("TFPEFT_CACHE_DIR", cache_dir)
    weights = {}
    run_trial = _Search.run_trial

    def recording_run_trial(self, trial):
        result = run_trial(self, trial)
        weights[int(trial.hyperparameters.values["unfreeze_depth"])] = [v.numpy() for v in self.model.weights]
        return result

    monkeypatch.setattr(_Search, "run_trial", recording_run_trial)
    result = tfpeft.tune(
        model_name_or_path=folder, train_file=csv, output_dir=output_dir, space=SPACE,
        options=TuningOptions(tuner="grid"), feature_cache=feature_cache, num_train_epochs=2,
        max_seq_length=16, per_device_train_batch_size=8, classifier_dropout=0.0, seed=5, verbose=0,
    )
    monkeypatch.undo()
    rows = {}
    for row in result.trials:
        path = os.path.join(output_dir, "tuning", "trials", f"trial_{row['trial_id']}", "summary.json")
        with open(path, encoding="utf-8") as file:
            rows[int(row["unfreeze_depth"])] = {**row, "feature_cache": json.load(file)["feature_cache"]}
    return rows, weights


@pytest.fixture(scope="module")
def searches(tiny_bert_no_dropout_dir, toy_csv, tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    cache_dir = str(tmp_path_factory.mktemp("search_cache"))
    root = tmp_path_factory.mktemp("cached_search")
    handler = _Collect()
    logger = logging.getLogger("tfpeft")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        cached = _search(tiny_bert_no_dropout_dir, toy_csv, str(root / "cached"), True, monkeypatch, cache_dir)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    naive = _search(tiny_bert_no_dropout_dir, toy_csv, str(root / "naive"), False, monkeypatch, cache_dir)
    return cached, naive, handler.messages


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_cached_trials_equal_naive_trials(searches):
    (cached_rows, cached_weights), (naive_rows, naive_weights), _ = searches
    assert sorted(cached_rows) == sorted(naive_rows) == [0, 1, 2]
    for depth in (0, 1, 2):
        assert cached_rows[depth]["status"] == naive_rows[depth]["status"] == "COMPLETED"
        assert float(cached_rows[depth]["objective"]) == pytest.approx(float(naive_rows[depth]["objective"]), abs=1e-5)
        assert len(cached_weights[depth]) == len(naive_weights[depth])
        for ours, theirs in zip(cached_weights[depth], naive_weights[depth]):
            np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert [naive_rows[depth]["feature_cache"] for depth in (0, 1, 2)] == ["off"] * 3
    assert [cached_rows[depth]["feature_cache"] for depth in (0, 1, 2)] == [
        "the pooled features of the frozen backbone",
        "the hidden states entering block 1 of 2",
        "the hidden states entering block 0 of 2",
    ]
    # The trials trained: each one's head moved away from the shared initial head.
    heads = [cached_weights[depth][-1] for depth in (0, 1, 2)]
    assert not np.allclose(heads[0], heads[1], atol=1e-4)


def test_shallowest_cut_computed_once_and_deeper_ones_derived(searches):
    _, _, messages = searches
    cache_lines = [m for m in messages if m.startswith("Feature cache:")]
    computed = [m for m in cache_lines if m.startswith("Feature cache: computed")]
    derived = [m for m in cache_lines if m.startswith("Feature cache: derived")]
    # 3 splits (train, validation, test) at the source cut, depth 0 for unfreeze_depth=2.
    assert len(computed) == 3
    assert all("entering block 0 of 2" in m for m in computed)
    # Depth 1 (unfreeze_depth=1) and the pooled features (unfreeze_depth=0), for 3 splits each.
    assert len(derived) == 6
    assert sum("entering block 1 of 2" in m for m in derived) == 3
    assert sum("the pooled features" in m for m in derived) == 3
    served = sorted(m for m in cache_lines if " trains on " in m)
    assert len(served) == 3
    assert any("(policy last_n:0) trains on the pooled features" in m for m in served)
    assert any("(policy last_n:1) trains on the hidden states entering block 1 of 2" in m for m in served)
    assert any("(policy last_n:2) trains on the hidden states entering block 0 of 2" in m for m in served)
