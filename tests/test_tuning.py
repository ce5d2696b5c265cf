import csv
import json
import os

import pytest

import tfpeft
from tfpeft.cli import main
from tfpeft.errors import ConfigError, OutputDirError
from tfpeft.search_space import SearchParameter, parse_space
from tfpeft.tuning import SearchFailedError, TuningOptions, _weights_fingerprint

SPACE = ["learning_rate=log:1e-4:1e-2", "unfreeze_depth=int:0:2"]


@pytest.fixture(scope="module")
def settings(tiny_bert_dir, toy_csv):
    return dict(
        model_name_or_path=tiny_bert_dir,
        train_file=toy_csv,
        num_train_epochs=2,
        max_seq_length=16,
        per_device_train_batch_size=16,
        verbose=0,
    )


@pytest.fixture(scope="module")
def pretrained_fingerprint(tiny_bert_dir):
    return _weights_fingerprint(tfpeft.load_backbone(tiny_bert_dir).main_layer.weights)


def read_trials(output_dir):
    with open(os.path.join(output_dir, "tuning", "trials.csv"), newline="") as file:
        return list(csv.DictReader(file))


def read_summaries(output_dir):
    trials_dir = os.path.join(output_dir, "tuning", "trials")
    summaries = []
    for name in sorted(os.listdir(trials_dir)):
        with open(os.path.join(trials_dir, name, "summary.json")) as file:
            summaries.append(json.load(file))
    return summaries


@pytest.fixture(scope="module")
def random_search(settings, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("search") / "random")
    result = tfpeft.tune(output_dir=output_dir, space=SPACE, options=TuningOptions(max_trials=3), **settings)
    return output_dir, result


def test_random_search_writes_trials(random_search):
    output_dir, result = random_search
    rows = read_trials(output_dir)
    assert result.trials_run == 3
    assert len(rows) == 3
    assert list(rows[0]) == ["trial_id", "learning_rate", "unfreeze_depth", "objective", "epochs", "seconds", "status", "error"]
    for row in rows:
        assert row["status"] == "COMPLETED"
        assert 1e-4 <= float(row["learning_rate"]) <= 1e-2
        assert row["unfreeze_depth"] in ("0", "1", "2")
        assert 0.0 <= float(row["objective"]) <= 1.0
        assert row["epochs"] == "2"
    assert os.path.isdir(os.path.join(output_dir, "tuning", "keras_tuner"))
    report = open(os.path.join(output_dir, "tuning", "report.md")).read()
    assert "learning_rate" in report
    assert "unfreeze_depth" in report


def test_trials_start_from_pretrained_weights(random_search, pretrained_fingerprint):
    output_dir, _ = random_search
    summaries = read_summaries(output_dir)
    assert len(summaries) == 3
    for summary in summaries:
        assert summary["promoted_from"] is None
        assert summary["backbone_start_sha256"] == pretrained_fingerprint


def test_best_config_is_best_trial(random_search):
    output_dir, result = random_search
    rows = read_trials(output_dir)
    best = max(rows, key=lambda row: float(row["objective"]))
    assert result.best_config.policy == f"last_n:{best['unfreeze_depth']}"
    assert result.best_config.learning_rate == pytest.approx(float(best["learning_rate"]))
    assert result.best_config.output_dir == os.path.join(output_dir, "best")


def test_best_config_round_trips_through_train(random_search, tmp_path):
    output_dir, result = random_search
    best_path = os.path.join(output_dir, "tuning", "best_config.toml")
    new_dir = str(tmp_path / "retrained")
    assert main(["train", "--config", best_path, "--output-dir", new_dir, "--quiet"]) == 0
    results = json.load(open(os.path.join(new_dir, "results.json")))
    assert results["policy"] == result.best_config.policy
    saved = tfpeft.TrainingConfig.from_toml(os.path.join(new_dir, "config.toml"))
    assert saved == result.best_config.replace(output_dir=new_dir)


def test_rerun_resumes_without_new_trials(random_search, settings):
    output_dir, first = random_search
    before = read_trials(output_dir)
    result = tfpeft.tune(output_dir=output_dir, space=SPACE, options=TuningOptions(max_trials=3), **settings)
    assert result.trials_run == 0
    assert [row["objective"] for row in read_trials(output_dir)] == [row["objective"] for row in before]


def test_different_search_refused(random_search, settings):
    output_dir, _ = random_search
    with pytest.raises(OutputDirError, match=r"contains a different search \(options max_trials: 3 there, 4 now\)"):
        tfpeft.tune(output_dir=output_dir, space=SPACE, options=TuningOptions(max_trials=4), **settings)


@pytest.mark.parametrize("tuner", ["bayesian", "grid"])
def test_bayesian_and_grid_complete(tuner, settings, tmp_path):
    space = SPACE if tuner == "bayesian" else ["learning_rate=choice:0.001,0.01", "unfreeze_depth=int:0:1"]
    max_trials = 3
    result = tfpeft.tune(
        output_dir=str(tmp_path / tuner), space=space, options=TuningOptions(tuner=tuner, max_trials=max_trials), **settings
    )
    rows = read_trials(str(tmp_path / tuner))
    assert len(rows) == 3 == result.trials_run
    assert all(row["status"] == "COMPLETED" for row in rows)
    if tuner == "grid":
        pairs = {(row["learning_rate"], row["unfreeze_depth"]) for row in rows}
        assert len(pairs) == 3  # grid points are not repeated


def test_hyperband_completes_all_trials(settings, tmp_path, pretrained_fingerprint):
    output_dir = str(tmp_path / "hyperband")
    result = tfpeft.tune(output_dir=output_dir, space=SPACE, options=TuningOptions(tuner="hyperband", max_epochs=3), **settings)
    rows = read_trials(output_dir)
    assert len(rows) == result.trials_run >= 4
    assert all(row["status"] == "COMPLETED" for row in rows)
    summaries = read_summaries(output_dir)
    promoted = [summary for summary in summaries if summary["promoted_from"]]
    fresh = [summary for summary in summaries if not summary["promoted_from"]]
    assert fresh
    for summary in fresh:
        assert summary["backbone_start_sha256"] == pretrained_fingerprint
    for summary in promoted:
        assert summary["hyperparameters"]["tuner/initial_epoch"] > 0
        assert summary["epochs"] == summary["hyperparameters"]["tuner/epochs"] - summary["hyperparameters"]["tuner/initial_epoch"]
    assert result.best_config.num_train_epochs in (1, 3)

    # A trial's weights checkpoint holds the head and the unfrozen blocks, never a frozen variable.
    from tfpeft.checkpoints import checkpoint_names

    for summary in summaries:
        path = os.path.join(output_dir, "tuning", "trials", f"trial_{summary['trial_id']}", "weights")
        names = checkpoint_names(path)["weights"]
        depth = summary["hyperparameters"]["unfreeze_depth"]
        blocks = {name.split("/")[1] for name in names if name.startswith("encoder/")}
        assert blocks == {f"layer_._{i}" for i in range(2 - depth, 2)}
        assert {"head/kernel", "head/bias"} <= set(names)
        assert not [name for name in names if name.startswith("embeddings/")]


def test_nan_trial_fails_others_complete(settings, tmp_path):
    output_dir = str(tmp_path / "nan")
    space = ["learning_rate=choice:0.001,1e39,0.01"]
    tfpeft.tune(output_dir=output_dir, space=space, options=TuningOptions(tuner="grid"), **settings)
    rows = {row["learning_rate"]: row for row in read_trials(output_dir)}
    assert rows["1e+39"]["status"] == "FAILED"
    assert "became nan" in rows["1e+39"]["error"].lower() or "became inf" in rows["1e+39"]["error"].lower()
    assert rows["1e+39"]["objective"] == ""
    assert rows["0.001"]["status"] == rows["0.01"]["status"] == "COMPLETED"


def test_search_with_only_failures_stops(settings, tmp_path):
    with pytest.raises(SearchFailedError, match="trials.csv"):
        tfpeft.tune(
            output_dir=str(tmp_path / "all_nan"), space=["learning_rate=choice:1e39"],
            options=TuningOptions(tuner="grid"), **settings,
        )


@pytest.mark.parametrize(
    "space, options, pattern",
    [
        (["unfreeze_depth=int:0:5"], TuningOptions(max_trials=1), r"unfreeze_depth=int:0:5 goes up to 5.*allows 0\.\.2"),
        (["unfreeze_depth=choice:0,9"], TuningOptions(max_trials=1), r"unfreeze_depth=choice:0,9 goes up to 9.*allows 0\.\.2"),
        (["unfreeze_depth=int:-1:1"], TuningOptions(max_trials=1), r"unfreeze_depth=int:-1:1: unfreeze_depth must be at least 0, got -1"),
        (["lora_r=choice:0,4"], TuningOptions(max_trials=1), r"lora_r=choice:0,4: lora_r must be at least 1, got 0"),
        (["lora_r=choice:4,8"], TuningOptions(max_trials=1), r"lora_r=choice:4,8 needs a policy of kind lora, but --policy is 'last_n:2'"),
        (["learning_rate=log:1e-5:1e-3"], TuningOptions(tuner="grid"), r"Grid search needs a finite set"),
        (["num_train_epochs=int:1:3"], TuningOptions(tuner="hyperband"), r"num_train_epochs cannot be searched under Hyperband"),
        (["learning_rat=log:1e-5:1e-3"], TuningOptions(), r"Cannot search 'learning_rat'\. Did you mean 'learning_rate'"),
        (["learning_rate=1e-5:1e-3"], TuningOptions(), r"start with log:, float:, int: or choice:"),
    ],
)
def test_invalid_space_stops_before_trials(space, options, pattern, settings, tmp_path):
    with pytest.raises(ConfigError, match=pattern):
        tfpeft.tune(output_dir=str(tmp_path / "bad"), space=space, options=options, **settings)
    assert not os.path.exists(tmp_path / "bad")


def test_unfreeze_depth_rejects_lora_policy(settings, tmp_path):
    with pytest.raises(ConfigError, match=r"unfreeze_depth=choice:0,1 needs a policy of kind head or last_n, but --policy is 'lora:r=4,alpha=8'"):
        tfpeft.tune(
            output_dir=str(tmp_path / "bad"), space=["unfreeze_depth=choice:0,1"], options=TuningOptions(max_trials=1),
            **{**settings, "policy": "lora:r=4"},
        )
    assert not os.path.exists(tmp_path / "bad")


def test_default_space_follows_policy():
    from tfpeft.search_space import default_space

    assert [parameter.name for parameter in default_space(6, "last_n")] == ["learning_rate", "unfreeze_depth"]
    assert [parameter.name for parameter in default_space(6, "head")] == ["learning_rate", "unfreeze_depth"]
    assert default_space(6, "lora")[1] == SearchParameter("lora_r", "choice", values=(4, 8, 16))
    assert [parameter.name for parameter in default_space(6, "bitfit")] == ["learning_rate"]


def test_missing_data_stops_before_trials(settings, tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        tfpeft.tune(output_dir=str(tmp_path / "run"), **{**settings, "train_file": str(tmp_path / "none.csv")})
    assert not os.path.exists(tmp_path / "run")


def test_tuning_options_validation():
    with pytest.raises(ConfigError, match=r"max_trials=5 does not apply to the hyperband tuner"):
        TuningOptions(tuner="hyperband", max_trials=5)
    with pytest.raises(ConfigError, match=r"Invalid tuner='sobol'"):
        TuningOptions(tuner="sobol")
    with pytest.raises(ConfigError, match=r"Invalid objective='f1'"):
        TuningOptions(objective="f1")


def test_parse_space_specs():
    space = parse_space({"learning_rate": "log:1e-5:1e-3", "num_train_epochs": [1, 2], "weight_decay": "float:0:0.1:0.05"})
    assert space[0] == SearchParameter("learning_rate", "log", 1e-5, 1e-3)
    assert space[1] == SearchParameter("num_train_epochs", "choice", values=(1, 2))
    assert space[2].step == 0.05
    assert SearchParameter.parse("lr_scheduler_type", "choice:linear,cosine").values == ("linear", "cosine")
    with pytest.raises(ConfigError, match="names learning_rate more than once"):
        parse_space(["learning_rate=log:1e-5:1e-3", "learning_rate=log:1e-4:1e-3"])
    with pytest.raises(ConfigError, match="Cannot search 'output_dir'"):
        parse_space(["output_dir=choice:a,b"])


def test_cli_tune_with_config_tables(tiny_bert_dir, toy_csv, tmp_path, capsys):
    config = tmp_path / "search.toml"
    config.write_text(
        f'model_name_or_path = "{tiny_bert_dir}"\ntrain_file = "{toy_csv}"\nmax_seq_length = 16\n'
        'num_train_epochs = 1\n\n[search]\nlearning_rate = [0.001, 0.01]\n\n[tuning]\ntuner = "grid"\n'
    )
    output_dir = tmp_path / "cli_search"
    status = main(["tune", "--config", str(config), "--output-dir", str(output_dir), "--retrain-best"])
    assert status == 0
    out = capsys.readouterr().out
    assert "Best trial" in out
    assert len(read_trials(str(output_dir))) == 2
    assert os.path.isfile(output_dir / "best" / "results.json")
    best = json.load(open(output_dir / "best" / "results.json"))
    assert best["test"]["num_examples"] == 6


def test_distributed_keras_tuner_mode_rejected(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    with pytest.raises(ConfigError, match="KERASTUNER_ORACLE_IP is set.*runs on one machine only"):
        tfpeft.tune(output_dir=str(tmp_path / "run"), **settings)
