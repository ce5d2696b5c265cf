import importlib
import json
import os
import random
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfpeft
import tiny
from tfpeft.cli import main
from tfpeft.errors import ExportError, TfpeftWarning
from tfpeft.export import (
    IDS_SIGNATURE,
    TEXT_SIGNATURE,
    check_ops,
    existing_versions,
    next_version,
    read_warmup_requests,
)
from tfpeft.text_cleaning import to_utf8

# The module, which the function tfpeft.export hides as an attribute of the package.
export_module = importlib.import_module("tfpeft.export")

# Runs in a new interpreter that imports nothing but TensorFlow and TensorFlow Text, like TF
# Serving loading the SavedModel: argv[1] is the version folder, argv[2] a JSON file of texts
# as hex strings, so that invalid UTF-8 survives the trip.
FRESH_PROCESS = r"""
import json, sys
import tensorflow as tf
import tensorflow_text
loaded = sorted(name for name in ("tfpeft", "transformers") if name in sys.modules)
model = tf.saved_model.load(sys.argv[1])
with open(sys.argv[2]) as file:
    texts = [bytes.fromhex(text) for text in json.load(file)]
outputs = model.signatures["serving_default"](text=tf.constant(texts, dtype=tf.string))
print(json.dumps({
    "loaded": loaded,
    "signatures": sorted(model.signatures),
    "probabilities": outputs["probabilities"].numpy().tolist(),
    "logits": outputs["logits"].numpy().tolist(),
    "label_id": outputs["label_id"].numpy().tolist(),
    "label": [label.decode("utf-8") for label in outputs["label"].numpy()],
    "dtypes": {name: output.dtype.name for name, output in outputs.items()},
}))
"""


def edge_batch(words):
    """Return the hard cases as UTF-8 bytes: empty, accents, controls, 3,000 words, invalid UTF-8."""
    rng = random.Random(0)
    return [
        b"",
        "Café élève naïve in Zürich, ÅNGSTRÖM straße".encode("utf-8"),
        "goal\x00 match\x07 team\x85 cup\u200b tax\x1b[0m".encode("utf-8"),
        " ".join(rng.choice(words) for _ in range(3000)).encode("utf-8"),
        b"vote \xff\xfe party \xc3 tax\xe2\x82",
    ]


def run_fresh_process(version_dir, texts, tmp_path):
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps([text.hex() for text in texts]))
    env = {key: value for key, value in os.environ.items() if key not in ("TF_USE_LEGACY_KERAS", "PYTHONPATH")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    completed = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, version_dir, str(texts_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def assert_serving_matches_run(version_dir, run_dir, texts, tmp_path):
    served = run_fresh_process(version_dir, texts, tmp_path)
    assert served["loaded"] == []
    assert served["signatures"] == [TEXT_SIGNATURE, IDS_SIGNATURE]
    assert served["dtypes"] == {"probabilities": "float32", "logits": "float32", "label_id": "int64", "label": "string"}

    classifier = tfpeft.load(run_dir)
    expected = classifier.predict_proba(texts)
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(served["logits"], classifier.predict_logits(texts), atol=1e-4, rtol=0)
    assert served["label_id"] == expected.argmax(axis=-1).tolist()
    predicted = tfpeft.predict(run_dir, [text.decode("utf-8", errors="replace") for text in texts])
    assert served["label"] == [record["label"] for record in predicted]


@pytest.fixture(scope="module")
def toy_run(tiny_bert_dir, toy_csv, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("export_runs") / "toy")
    tfpeft.train(
        model_name_or_path=tiny_bert_dir,
        train_file=toy_csv,
        output_dir=output_dir,
        policy="last_n:1",
        num_train_epochs=1,
        learning_rate=1e-3,
        max_seq_length=32,
        verbose=0,
    )
    return output_dir


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def exported(toy_run, models_dir):
    return tfpeft.export(toy_run, os.path.join(models_dir, "toy"), verbose=0)


def test_export_layout(exported):
    assert exported.version == 1
    assert exported.signatures == [TEXT_SIGNATURE, IDS_SIGNATURE]
    assert exported.text_signature_missing is None
    entries = set(os.listdir(exported.path))
    assert {"saved_model.pb", "variables", "assets", "assets.extra"} <= entries
    with open(os.path.join(exported.path, "assets", "labels.txt"), encoding="utf-8") as file:
        assert file.read() == "politics\nsport\ntech\n"
    extra = set(os.listdir(os.path.join(exported.path, "assets.extra")))
    assert extra == {"tf_serving_warmup_requests", "tfpeft_export.json", "tokenizer"}
    with open(os.path.join(exported.path, "assets.extra", "tfpeft_export.json"), encoding="utf-8") as file:
        info = json.load(file)
    assert info["labels"] == ["politics", "sport", "tech"]
    assert info["max_seq_length"] == 32
    assert info["signatures"] == [TEXT_SIGNATURE, IDS_SIGNATURE]


def test_fresh_process_matches_keras(exported, toy_run, tmp_path):
    texts = edge_batch(tiny.vocabulary()[len(tiny.SPECIAL_TOKENS):])
    assert_serving_matches_run(exported.path, toy_run, texts, tmp_path)


def test_warmup_requests_replay(exported, toy_run):
    requests = read_warmup_requests(os.path.join(exported.path, "assets.extra", "tf_serving_warmup_requests"))
    assert [name for name, _ in requests] == [TEXT_SIGNATURE, TEXT_SIGNATURE, IDS_SIGNATURE]

    # The run's first 3 test texts, the fixed warmup texts and a text of max_seq_length words.
    texts = export_module._warmup_texts(toy_run, 32)
    assert len(texts) == 3 + len(export_module.WARMUP_TEXTS) + 1
    assert requests[0][1]["text"].tolist() == [to_utf8(text) for text in texts]
    assert requests[1][1]["text"].tolist() == [to_utf8(texts[0])]

    model = tf.saved_model.load(exported.path)
    classifier = tfpeft.load(toy_run)
    expected = classifier.predict_proba(texts)
    for (signature_name, inputs), rows in zip(requests, [expected, expected[:1], expected]):
        outputs = model.signatures[signature_name](**{key: tf.constant(value) for key, value in inputs.items()})
        np.testing.assert_allclose(outputs["probabilities"].numpy(), rows, atol=1e-4, rtol=0)
    ids = requests[2][1]
    assert ids["input_ids"].dtype == np.int32
    assert ids["input_ids"].shape == (len(texts), 32)
    assert ids["attention_mask"].sum(axis=1).max() == 32


def parse_saved_model_cli(output):
    """Return ``{signature: {"inputs": {name: (dtype, shape)}, "outputs": {...}}}``."""
    signatures = {}
    for block in output.split("signature_def['")[1:]:
        name = block.split("'", 1)[0]
        tensors = {"inputs": {}, "outputs": {}}
        pattern = r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))"
        for kind, tensor, dtype, shape in re.findall(pattern, block):
            tensors[kind][tensor] = (dtype, shape)
        signatures[name] = tensors
    return signatures


def test_saved_model_cli_lists_signatures(exported, tmp_path):
    saved_model_cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    env = {key: value for key, value in os.environ.items() if key != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    completed = subprocess.run(
        [saved_model_cli, "show", "--dir", exported.path, "--all"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    signatures = parse_saved_model_cli(completed.stdout)
    outputs = {
        "probabilities": ("DT_FLOAT", "(-1, 3)"),
        "label_id": ("DT_INT64", "(-1)"),
        "label": ("DT_STRING", "(-1)"),
        "logits": ("DT_FLOAT", "(-1, 3)"),
    }
    assert signatures[TEXT_SIGNATURE] == {"inputs": {"text": ("DT_STRING", "(-1)")}, "outputs": outputs}
    ids = {"input_ids": ("DT_INT32", "(-1, -1)"), "attention_mask": ("DT_INT32", "(-1, -1)")}
    assert signatures[IDS_SIGNATURE] == {"inputs": ids, "outputs": outputs}


def test_versions_increase_and_never_overwrite(exported, toy_run, models_dir, capsys):
    model_dir = os.path.join(models_dir, "toy")
    saved_model_pb = os.path.join(exported.path, "saved_model.pb")
    modified = os.stat(saved_model_pb).st_mtime_ns

    second = tfpeft.export(toy_run, model_dir, verbose=0)
    assert second.version == 2
    assert second.path == os.path.join(model_dir, "2")
    assert main(["export", toy_run, "--to", model_dir, "--version", "1", "--quiet"]) == 1
    error = capsys.readouterr().err
    assert "tfpeft export: error: Version 1 already exists" in error
    assert "leave it out to write version 3" in error
    assert os.stat(saved_model_pb).st_mtime_ns == modified

    assert main(["export", toy_run, "--to", model_dir, "--version", "5", "--quiet"]) == 0
    assert existing_versions(model_dir) == [1, 2, 5]
    # Only version folders are left: no staging folder from any of the exports.
    assert sorted(os.listdir(model_dir)) == ["1", "2", "5"]
    assert next_version(model_dir) == 6


def test_version_zero_rejected(toy_run, models_dir):
    with pytest.raises(ExportError, match="--version must be a positive integer; got 0"):
        tfpeft.export(toy_run, os.path.join(models_dir, "zero"), version=0, verbose=0)


def test_failed_op_check_leaves_no_version(toy_run, models_dir, monkeypatch):
    servable = export_module.servable_op_names()
    assert "FastWordpieceTokenizeWithOffsets" in servable
    assert "EagerPyFunc" not in servable
    monkeypatch.setattr(export_module, "servable_op_names", lambda: servable - {"FastWordpieceTokenizeWithOffsets"})
    model_dir = os.path.join(models_dir, "failing")
    with pytest.raises(ExportError, match="TF Serving cannot run them: FastWordpieceTokenizeWithOffsets"):
        tfpeft.export(toy_run, model_dir, verbose=0)
    assert os.listdir(model_dir) == []


def test_op_check_rejects_python_ops(tmp_path):
    module = tf.Module()
    module.double = tf.function(
        lambda x: tf.py_function(lambda y: y * 2, [x], tf.float32),
        input_signature=[tf.TensorSpec([None], tf.float32)],
    )
    path = str(tmp_path / "py_function")
    tf.saved_model.save(module, path)
    with pytest.raises(ExportError, match="cannot run them: EagerPyFunc"):
        check_ops(path)


def test_predict_command_on_exported_model(exported, toy_run, capsys, tmp_path):
    texts = ["goal match", "vote party tax", "chip phone"]
    expected = tfpeft.predict(toy_run, texts)
    # The version folder, and the model folder, whose highest version is used.
    for path in (exported.path, os.path.dirname(exported.path)):
        assert main(["predict", path, "--text", texts[0], "--text", texts[1], "--text", texts[2]]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
        assert [record["label"] for record in records] == [record["label"] for record in expected]
        for record, reference in zip(records, expected):
            assert record["text"] == reference["text"]
            for name, probability in reference["probabilities"].items():
                assert abs(record["probabilities"][name] - probability) < 1e-4

    # A run folder is the run even with a version folder inside; this one cannot load.
    run_copy = tmp_path / "run"
    shutil.copytree(toy_run, run_copy)
    shutil.copytree(exported.path, run_copy / "1")
    shutil.rmtree(run_copy / "1" / "variables")
    assert [record["label"] for record in tfpeft.predict(str(run_copy), texts)] == [record["label"] for record in expected]
    with pytest.raises(ExportError, match=r"is a tfpeft run folder \(config.toml is there\); export to a folder of its own"):
        tfpeft.export(toy_run, str(run_copy), verbose=0)

    # A SavedModel without tfpeft's export record.
    bare = tmp_path / "bare" / "1"
    shutil.copytree(exported.path, bare)
    os.remove(bare / "assets.extra" / "tfpeft_export.json")
    assert main(["predict", str(bare), "--text", "goal"]) == 1
    assert "contains a SavedModel but no assets.extra/tfpeft_export.json" in capsys.readouterr().err

    # A version that does not exist: the error points at exports and lists the versions there.
    missing = os.path.join(os.path.dirname(exported.path), "77")
    assert main(["predict", missing, "--text", "goal"]) == 1
    error = capsys.readouterr().err
    assert "also takes a model exported by `tfpeft export`" in error
    assert f"has versions {', '.join(str(v) for v in existing_versions(os.path.dirname(exported.path)))}" in error


def save_tiny_roberta(folder):
    """Write a random tiny RoBERTa with a byte-level BPE tokenizer trained on the toy texts."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaTokenizerFast, TFRobertaModel

    os.makedirs(folder, exist_ok=True)
    texts, _ = tiny.toy_examples()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(folder)
    tokenizer = RobertaTokenizerFast(
        vocab_file=os.path.join(folder, "vocab.json"), merges_file=os.path.join(folder, "merges.txt")
    )
    tokenizer.save_pretrained(folder)

    tf.keras.utils.set_random_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = TFRobertaModel(config)
    model(model.dummy_inputs)
    model.save_pretrained(folder)
    return folder


def test_bpe_run_exports_ids_only(toy_csv, models_dir, tmp_path_factory):
    backbone_dir = save_tiny_roberta(str(tmp_path_factory.mktemp("tiny_roberta")))
    run_dir = str(tmp_path_factory.mktemp("export_runs") / "roberta")
    tfpeft.train(model_name_or_path=backbone_dir, train_file=toy_csv, output_dir=run_dir, policy="head",
                 num_train_epochs=1, max_seq_length=32, verbose=0)

    with pytest.warns(TfpeftWarning, match="serving_ids signature only, because RobertaTokenizerFast has no in-graph form"):
        result = tfpeft.export(run_dir, os.path.join(models_dir, "roberta"), verbose=0)
    assert result.signatures == [IDS_SIGNATURE]
    assert "BPE model" in result.text_signature_missing

    model = tf.saved_model.load(result.path)
    assert sorted(model.signatures) == [IDS_SIGNATURE]
    requests = read_warmup_requests(os.path.join(result.path, "assets.extra", "tf_serving_warmup_requests"))
    assert [name for name, _ in requests] == [IDS_SIGNATURE]

    texts = ["goal match", "vote\x07 party \ufffd tax", ""]
    expected = tfpeft.load(run_dir).predict_proba(texts)
    served = tfpeft.predict(result.path, texts)
    np.testing.assert_allclose([list(record["probabilities"].values()) for record in served], expected, atol=1e-4, rtol=0)


@pytest.mark.minilm
def test_minilm_fresh_process_matches_keras(tmp_path_factory, tmp_path):
    run_dir = str(tmp_path_factory.mktemp("export_minilm") / "bbc")
    tfpeft.train(
        dataset="bbc_news",
        model_name_or_path="minilm",
        policy="head",
        output_dir=run_dir,
        num_train_epochs=1,
        max_train_samples=200,
        max_eval_samples=40,
        max_seq_length=64,
        learning_rate=1e-3,
        verbose=0,
    )
    result = tfpeft.export(run_dir, str(tmp_path_factory.mktemp("minilm_models") / "bbc"), verbose=0)
    assert result.signatures == [TEXT_SIGNATURE, IDS_SIGNATURE]

    words = "shares fell sharply after the bank reported profits striker scored twice minister election".split()
    texts = edge_batch(words) + ["北京 stocks rose 3% [SEP] after the news".encode("utf-8")]
    assert_serving_matches_run(result.path, run_dir, texts, tmp_path)


@pytest.fixture(scope="module")
def xlmr_run(tiny_family_dir, toy_csv, tmp_path_factory):
    # Tail truncation, so that the in-graph cut of a SentencePiece tokenizer is checked too.
    run_dir = str(tmp_path_factory.mktemp("export_runs") / "xlmr")
    tfpeft.train(model_name_or_path=tiny_family_dir("xlm-roberta"), train_file=toy_csv, output_dir=run_dir,
                 policy="last_n:1", num_train_epochs=1, learning_rate=1e-3, max_seq_length=24, truncation="tail",
                 verbose=0)
    return run_dir


def test_sentencepiece_fresh_process_matches_keras(xlmr_run, models_dir, tmp_path):
    with warnings_as_errors():
        result = tfpeft.export(xlmr_run, os.path.join(models_dir, "xlmr"), verbose=0)
    assert result.signatures == [TEXT_SIGNATURE, IDS_SIGNATURE]
    assert "SentencepieceOp" in check_ops(result.path)

    texts = edge_batch(tiny.vocabulary()[len(tiny.SPECIAL_TOKENS):]) + [
        "北京 and 😀👍🏽 ``quoted''  spaces\u3000 ".encode("utf-8"),
        "   ".encode("utf-8"),
    ]
    assert_serving_matches_run(result.path, xlmr_run, texts, tmp_path)

    requests = read_warmup_requests(os.path.join(result.path, "assets.extra", "tf_serving_warmup_requests"))
    model = tf.saved_model.load(result.path)
    classifier = tfpeft.load(xlmr_run)
    for signature_name, inputs in requests:
        outputs = model.signatures[signature_name](**{key: tf.constant(value) for key, value in inputs.items()})
        texts = inputs["text"].tolist() if "text" in inputs else export_module._warmup_texts(xlmr_run, 24)
        expected = classifier.predict_proba(texts)
        np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-4, rtol=0)


class warnings_as_errors:
    """Fail on any TfpeftWarning, such as the one for an export with serving_ids only."""

    def __enter__(self):
        import warnings

        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.simplefilter("error", TfpeftWarning)

    def __exit__(self, *exc_info):
        return self._context.__exit__(*exc_info)


@pytest.fixture(scope="module")
def albert_pair_run(tiny_family_dir, tmp_path_factory):
    from test_pairs import pair_frame

    run_dir = str(tmp_path_factory.mktemp("export_runs") / "albert_pairs")
    tfpeft.train(train_data=pair_frame(60, seed=2), model_name_or_path=tiny_family_dir("albert"), output_dir=run_dir,
                 text_column="premise", text_pair_column="hypothesis", truncation="head_tail", max_seq_length=12,
                 num_train_epochs=1, learning_rate=1e-3, policy="full", verbose=0)
    return run_dir


def test_pair_run_serves_text_pairs(albert_pair_run, models_dir):
    with warnings_as_errors():
        result = tfpeft.export(albert_pair_run, os.path.join(models_dir, "albert_pairs"), verbose=0)
    assert result.signatures == [TEXT_SIGNATURE, IDS_SIGNATURE]
    model = tf.saved_model.load(result.path)
    assert sorted(model.signatures[TEXT_SIGNATURE].structured_input_signature[1]) == ["text", "text_pair"]
    ids_inputs = model.signatures[IDS_SIGNATURE].structured_input_signature[1]
    assert sorted(ids_inputs) == ["attention_mask", "input_ids", "token_type_ids"]

    words = tiny.vocabulary()[len(tiny.SPECIAL_TOKENS):]
    texts = edge_batch(words)
    text_pairs = texts[2:] + texts[:2]
    outputs = model.signatures[TEXT_SIGNATURE](text=tf.constant(texts), text_pair=tf.constant(text_pairs))
    classifier = tfpeft.load(albert_pair_run)
    expected = classifier.predict_proba(texts, text_pairs=text_pairs)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-4, rtol=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="text and text_pair must have the same number of elements"):
        model.signatures[TEXT_SIGNATURE](text=tf.constant(texts), text_pair=tf.constant(text_pairs[:1]))

    requests = read_warmup_requests(os.path.join(result.path, "assets.extra", "tf_serving_warmup_requests"))
    assert [name for name, _ in requests] == [TEXT_SIGNATURE, TEXT_SIGNATURE, IDS_SIGNATURE]
    warm_texts, warm_pairs = export_module._warmup_texts(albert_pair_run, 12, pairs=True)
    warm_expected = classifier.predict_proba(warm_texts, text_pairs=warm_pairs)
    for (signature_name, inputs), rows in zip(requests, [warm_expected, warm_expected[:1], warm_expected]):
        outputs = model.signatures[signature_name](**{key: tf.constant(value) for key, value in inputs.items()})
        np.testing.assert_allclose(outputs["probabilities"].numpy(), rows, atol=1e-4, rtol=0)
    assert requests[2][1]["token_type_ids"].max() == 1

    plain = ["goal match team", "vote party"]
    served = tfpeft.predict(result.path, plain, text_pairs=plain[::-1])
    reference = tfpeft.predict(albert_pair_run, plain, text_pairs=plain[::-1])
    assert [record["label"] for record in served] == [record["label"] for record in reference]
    with pytest.raises(tfpeft.errors.ConfigError, match="trained on sentence pairs; pass text_pairs"):
        tfpeft.predict(result.path, plain)
