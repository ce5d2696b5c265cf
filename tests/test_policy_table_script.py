"""scripts/policy_table.py: the learning-rate search and the table it prints."""

import importlib.util
import json
import os
import types

import pytest

from tfpeft.errors import ConfigError

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "policy_table.py")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("policy_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_search_keeps_best_validation_rate(script, monkeypatch, tmp_path):
    scores = {1e-4: 0.5, 3e-4: 0.7, 5e-5: 0.6}
    trained = []

    def fake_train(args, policy, rate, epochs, output_dir):
        trained.append((policy, rate, epochs))
        return {"validation": {"macro_f1": scores[rate]}}

    monkeypatch.setattr(script, "train_one", fake_train)
    args = types.SimpleNamespace(no_search=False, search_epochs=1)
    progress = script.Progress(0)
    rate, chosen_by = script.choose_learning_rate(args, "last_n:2", str(tmp_path), progress)
    assert rate == 3e-4
    assert chosen_by == "best of 5e-05, 0.0001, 0.0003 (grid edge)"
    assert trained == [("last_n:2", 5e-5, 1), ("last_n:2", 1e-4, 1), ("last_n:2", 3e-4, 1)]

    args.no_search = True
    assert script.choose_learning_rate(args, "full", str(tmp_path), progress) == (5e-5, "middle of grid")


def test_unknown_policy_fails_before_training(script):
    with pytest.raises(ConfigError, match="Did you mean .bitfit."):
        script.main(["--policies", "head,bitfitt", "--no-search"])


def test_table_rows_equal_run_results(script, tiny_bert_dir, tmp_path, capsys):
    output = tmp_path / "table.md"
    status = script.main([
        "--model", tiny_bert_dir, "--policies", "head,bitfit", "--epochs", "1", "--no-search",
        "--max-train-samples", "40", "--max-eval-samples", "10", "--max-seq-length", "16",
        "--work-dir", str(tmp_path), "--output", str(output),
    ])
    assert status == 0
    assert output.read_text().strip() == capsys.readouterr().out.strip()
    rows = [line for line in output.read_text().splitlines() if line.startswith("| `")]
    assert len(rows) == 2
    for row, policy in zip(rows, ["head", "bitfit"]):
        results = json.load(open(tmp_path / f"final-{policy}" / "results.json"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[0] == f"`{policy}`"
        assert cells[1] == f"{script.LEARNING_RATE_GRIDS[policy][1]:g}"
        assert cells[3] == f"{results['trainable_params']:,}"
        assert cells[5] == f"{results['test']['accuracy']:.4f}"
        assert cells[6] == f"{results['test']['macro_f1']:.4f}"
        assert results["num_examples"]["train"] == 40


def test_table_escapes_pipes_in_policies(script):
    row = {
        "policy": "lora:r=8,alpha=16,target_modules=query|value", "learning_rate": 1e-3, "chosen_by": "middle of grid",
        "trainable_params": 75653, "trainable_percent": 0.33, "accuracy": 0.99, "macro_f1": 0.98, "train_seconds": 12.0,
    }
    line = script.format_table([row]).splitlines()[-1]
    assert line.startswith("| `lora:r=8,alpha=16,target_modules=query\\|value` |")
    assert line.replace("\\|", "").count("|") == 9
