import json
import os
import warnings

import pytest

from tfpeft.cli import main


@pytest.fixture(scope="module")
def cli_run(tiny_bert_dir, toy_csv, tmp_path_factory):
    config = tmp_path_factory.mktemp("config") / "toy.toml"
    config.write_text(
        f'model_name_or_path = "{tiny_bert_dir}"\ntrain_file = "{toy_csv}"\n'
        'num_train_epochs = 5\nmax_seq_length = 16\nlearning_rate = 1e-3\npolicy = "head"\n'
    )
    output_dir = str(tmp_path_factory.mktemp("cli") / "run")
    status = main(["train", "--config", str(config), "--num-train-epochs", "1", "--output-dir", output_dir, "--quiet"])
    assert status == 0
    return output_dir


def test_train_flags_override_config(cli_run):
    results = json.load(open(os.path.join(cli_run, "results.json")))
    assert results["epochs_completed"] == 1
    assert results["policy"] == "head"
    assert "num_train_epochs = 1" in open(os.path.join(cli_run, "config.toml")).read()


def test_train_refuses_non_empty_output_dir(cli_run, tiny_bert_dir, toy_csv, capsys):
    status = main(["train", "--model", tiny_bert_dir, "--train-file", toy_csv, "--output-dir", cli_run, "--quiet"])
    assert status == 1
    assert "tfpeft train: error: output_dir" in capsys.readouterr().err


def test_predict_prints_json_lines(cli_run, capsys, tmp_path):
    input_file = tmp_path / "texts.txt"
    input_file.write_text("vote party\n\nchip phone\n")
    assert main(["predict", cli_run, "--text", "goal match", "--input-file", str(input_file)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [record["text"] for record in records] == ["goal match", "vote party", "chip phone"]
    for record in records:
        assert record["label"] in ("politics", "sport", "tech")
        assert set(record["probabilities"]) == {"politics", "sport", "tech"}
        assert abs(sum(record["probabilities"].values()) - 1.0) < 1e-5
        assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)


def test_predict_without_texts_fails(cli_run):
    with pytest.raises(SystemExit, match="no texts"):
        main(["predict", cli_run])


def test_inspect_json_counts(tiny_bert_dir, capsys):
    assert main(["inspect", "--model", tiny_bert_dir, "--policy", "last_n:1", "--num-labels", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_params"] == 2224 + 51
    assert report["total_params"] == 7459
    assert [part["name"] for part in report["parts"]] == ["embeddings", "block_0", "block_1", "pooler", "head"]
    assert report["parts"][2] == {"name": "block_1", "trainable": 2224, "total": 2224, "lora": 0}


def test_inspect_bad_policy_is_clear_error(tiny_bert_dir, capsys):
    assert main(["inspect", "--model", tiny_bert_dir, "--policy", "last_n:7"]) == 1
    assert "use K in 0..2" in capsys.readouterr().err


def test_help_explains_every_training_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--num-train-epochs", "--per-device-train-batch-size", "--learning-rate", "--logging-dir",
                 "--eval-strategy", "--overwrite-output-dir", "--max-seq-length", "--config"):
        assert flag in text


def test_unknown_dataset_error(tmp_path, capsys):
    status = main(["train", "--dataset", "bbc", "--output-dir", str(tmp_path / "run"), "--quiet"])
    assert status == 1
    assert "Unknown dataset 'bbc'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_evaluation_strategy_flag_logs_one_line(tmp_path, capsys, caplog):
    # --seed -1 fails validation right after the flag is mapped, so no backbone is loaded.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = main(["train", "--evaluation-strategy", "no", "--seed", "-1", "--output-dir", str(tmp_path / "run")])
    assert status == 1
    assert [str(warning.message) for warning in caught if "deprecated" in str(warning.message)] == []
    assert "--evaluation-strategy is deprecated, as in transformers; use --eval-strategy no." in caplog.text
    assert "tfpeft train: error: Invalid seed=-1: use an integer from 0 to 4294967295" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_predict_input_file_encoding(cli_run, tmp_path, capsys):
    input_file = tmp_path / "latin1.txt"
    input_file.write_bytes("caf\xe9 vote\r\ngoal\r\n".encode("latin-1"))
    assert main(["predict", cli_run, "--input-file", str(input_file)]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"tfpeft predict: error: The data file '{input_file}' is not valid utf-8: byte 0xe9")
    assert "(line 1)" in error
    assert "--encoding latin-1" in error
    assert main(["predict", cli_run, "--input-file", str(input_file), "--encoding", "latin-1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [record["text"] for record in records] == ["caf\xe9 vote", "goal"]


@pytest.mark.parametrize("batch_size", ["0", "-3"])
def test_predict_rejects_batch_size_below_one(cli_run, batch_size, capsys):
    assert main(["predict", cli_run, "--text", "hi", "--batch-size", batch_size]) == 1
    assert capsys.readouterr().err == (
        f"tfpeft predict: error: Invalid batch_size={batch_size} (--batch-size): use 1 or more, or "
        "leave it unset for the run's per_device_eval_batch_size.\n"
    )


def test_logging_dir_that_is_a_file_fails_before_run_folder(tiny_bert_dir, toy_csv, tmp_path, capsys):
    log_file = tmp_path / "afile"
    log_file.write_text("notes\n")
    output_dir = tmp_path / "run"
    status = main(["train", "--model", tiny_bert_dir, "--train-file", toy_csv, "--logging-dir", str(log_file),
                   "--output-dir", str(output_dir), "--quiet"])
    assert status == 1
    assert capsys.readouterr().err == (
        f"tfpeft train: error: Invalid logging_dir='{log_file}' (--logging-dir): it is a file, not a "
        "folder. Pass a folder path, or leave it unset for OUTPUT_DIR/logs.\n"
    )
    assert not output_dir.exists()
    assert log_file.read_text() == "notes\n"


@pytest.mark.parametrize(
    "flags, message",
    [
        ([], "Pass exactly one of --dataset (a built-in or tfds: name), --test-file (a file) or, in "
             "Python, test_data; got none."),
        (["--dataset", "bbc_news", "--test-file", "t.csv"],
         "Pass exactly one of --dataset (a built-in or tfds: name), --test-file (a file) or, in "
         "Python, test_data; got --dataset and --test-file."),
        (["--test-file", "t.csv", "--split", "train"],
         "--split train applies only to --dataset; --test-file is evaluated whole. Drop --split."),
    ],
)
def test_evaluate_source_errors_before_model_load(flags, message, tmp_path, capsys, caplog):
    # The run folder does not exist: the source check comes first, before any load.
    run_dir = str(tmp_path / "no_run")
    assert main(["evaluate", run_dir, *flags]) == 1
    assert capsys.readouterr().err == f"tfpeft evaluate: error: {message}\n"
    assert "Loaded backbone" not in caplog.text
    assert not os.path.exists(run_dir)


def test_evaluate_missing_run_folder(tmp_path, toy_csv, capsys):
    run_dir = str(tmp_path / "nope")
    assert main(["evaluate", run_dir, "--test-file", toy_csv]) == 1
    assert capsys.readouterr().err == (
        f"tfpeft evaluate: error: The run folder '{run_dir}' does not exist. Pass the output_dir "
        "of a completed `tfpeft train`.\n"
    )
    assert not os.path.exists(run_dir)


def test_evaluate_header_only_file(cli_run, tmp_path, capsys):
    path = tmp_path / "header_only.csv"
    path.write_text("text,label\n")
    assert main(["evaluate", cli_run, "--test-file", str(path), "--quiet"]) == 1
    assert capsys.readouterr().err == (
        f"tfpeft evaluate: error: {path} has no data rows. Add examples below the header, one per row.\n"
    )
    assert not os.path.exists(os.path.join(cli_run, "eval", "header_only"))


def test_train_help_output_dir_and_frozen_dropout(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "logs; required for train. (default: unset)" in text
    assert "frozen backbone parts while training. (default: False)" in text
    assert "(off by default)" not in text


def test_negative_last_n_names_policy(tiny_bert_dir, capsys):
    assert main(["inspect", "--model", tiny_bert_dir, "--policy", "last_n:-1"]) == 1
    assert capsys.readouterr().err == (
        "tfpeft inspect: error: policy last_n needs a block count K >= 0, as in 'last_n:2'; got last_n:-1.\n"
    )
