import pytest

from tfpeft.config import TrainingConfig
from tfpeft.errors import ConfigError, TfpeftWarning


def test_defaults_match_transformers_names():
    config = TrainingConfig()
    assert config.eval_strategy == "epoch"
    assert config.lr_scheduler_type == "linear"
    assert config.metric_for_best_model == "macro_f1"
    assert config.greater_is_better


def test_toml_round_trip(tmp_path):
    config = TrainingConfig(output_dir="runs/x", dataset="bbc_news", learning_rate=3e-5, early_stopping_patience=2)
    config.to_toml(tmp_path / "config.toml")
    assert TrainingConfig.from_toml(tmp_path / "config.toml") == config


def test_overrides_beat_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('num_train_epochs = 5\nlearning_rate = 2e-5\ndataset = "bbc_news"\n')
    config = TrainingConfig.from_toml(path, num_train_epochs=1, learning_rate=None)
    assert config.num_train_epochs == 1
    assert config.learning_rate == 2e-5
    assert config.dataset == "bbc_news"


def test_evaluation_strategy_is_deprecated_alias():
    with pytest.warns(TfpeftWarning, match="evaluation_strategy is deprecated.*use eval_strategy"):
        config = TrainingConfig.from_dict({"evaluation_strategy": "no"})
    assert config.eval_strategy == "no"


def test_unknown_key_suggests(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("num_train_epoch = 5\n")
    with pytest.raises(ConfigError, match=r"Unknown setting in .*config\.toml: 'num_train_epoch' \(did you mean 'num_train_epochs'\?\)"):
        TrainingConfig.from_toml(path)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"num_train_epochs": 0}, r"num_train_epochs=0: use 1 or more"),
        ({"learning_rate": -1.0}, r"learning_rate=-1.0"),
        ({"lr_scheduler_type": "step"}, r"lr_scheduler_type='step': use one of linear, cosine, constant"),
        ({"eval_strategy": "steps"}, r"eval_strategy='steps'"),
        ({"metric_for_best_model": "f1"}, r"metric_for_best_model='f1'"),
        ({"num_train_epochs": "3"}, r"num_train_epochs='3': expected int, got str"),
        ({"policy": "last_n:two"}, r"last_n needs an integer"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio=1.0"),
        ({"early_stopping_patience": 2, "eval_strategy": "no"}, r"early_stopping_patience needs a validation metric"),
        ({"dataset": "bbc_news", "train_file": "x.csv"}, r"Both dataset='bbc_news' and train_file='x.csv'"),
    ],
)
def test_invalid_values_name_field(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainingConfig(**changes)


def test_val_prefix_accepted_for_best_metric():
    assert TrainingConfig(metric_for_best_model="val_loss").best_metric == "loss"
    assert not TrainingConfig(metric_for_best_model="eval_loss").greater_is_better


def test_invalid_toml_names_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("num_train_epochs = = 3\n")
    with pytest.raises(ConfigError, match="bad.toml.* is not valid TOML"):
        TrainingConfig.from_toml(path)


def test_evaluation_strategy_accepted_by_constructor():
    with pytest.warns(TfpeftWarning, match="evaluation_strategy is deprecated.*use eval_strategy"):
        config = TrainingConfig(evaluation_strategy="no")
    assert config.eval_strategy == "no"


def test_unknown_keys_all_reported_with_suggestions(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("num_train_epoch = 5\nlearnin_rate = 2e-5\nzzqqxx = 1\n")
    with pytest.raises(ConfigError) as error:
        TrainingConfig.from_toml(path)
    assert str(error.value) == (
        f"Unknown settings in {path}: 'learnin_rate' (did you mean 'learning_rate'?), "
        "'num_train_epoch' (did you mean 'num_train_epochs'?), 'zzqqxx'. The settings are the "
        "fields of TrainingConfig, listed by `tfpeft train --help`."
    )


def test_nested_table_says_file_must_be_flat(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('dataset = "bbc_news"\n[training]\nnum_train_epochs = 2\n')
    with pytest.raises(ConfigError) as error:
        TrainingConfig.from_toml(path)
    message = str(error.value)
    assert message.startswith(f"{path} has the table(s) [training]")
    assert "the config file must be flat: put settings at the top level" in message


def test_type_error_names_config_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('num_train_epochs = "3"\n')
    with pytest.raises(ConfigError) as error:
        TrainingConfig.from_toml(path)
    assert str(error.value) == f"Invalid num_train_epochs='3' in {path}: expected int, got str."
    # A flag that overrides the bad value makes the file usable.
    assert TrainingConfig.from_toml(path, num_train_epochs=2).num_train_epochs == 2


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_outside_numpy_range_rejected(seed):
    with pytest.raises(ConfigError) as error:
        TrainingConfig(seed=seed)
    assert str(error.value) == f"Invalid seed={seed}: use an integer from 0 to 4294967295 (2**32 - 1)."


def test_seed_range_ends_accepted():
    assert TrainingConfig(seed=0).seed == 0
    assert TrainingConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_held_out_fractions_must_leave_training_data():
    with pytest.raises(ConfigError) as error:
        TrainingConfig(validation_fraction=0.6, test_fraction=0.4)
    assert str(error.value) == (
        "Invalid validation_fraction=0.6 and test_fraction=0.4: together they hold out 1 of the "
        "data, leaving nothing to train on. Use fractions that add up to less than 1 (0 and 0 "
        "hold out nothing)."
    )
    config = TrainingConfig(validation_fraction=0.0, test_fraction=0.0)
    assert (config.validation_fraction, config.test_fraction) == (0.0, 0.0)
