import os
import sys
import tempfile

# Tests never reach the Hugging Face Hub; a Hub name must fail fast instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Feature caches of test runs go to a throwaway folder, never the user's cache.
os.environ["TFPEFT_CACHE_DIR"] = tempfile.mkdtemp(prefix="tfpeft-test-cache-")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402

import tfpeft  # noqa: E402,F401  (binds tf.keras to tf_keras before any test imports TensorFlow)
import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny random BERT folder written with save_pretrained, shared by all tests."""
    return tiny.save_tiny_bert(str(tmp_path_factory.mktemp("tiny_bert")))


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory):
    """A CSV of 60 toy texts in 3 classes, 20 each."""
    texts, labels = tiny.toy_examples(num_per_class=20)
    return tiny.write_csv(str(tmp_path_factory.mktemp("toy") / "toy.csv"), texts, labels)


@pytest.fixture(scope="session")
def tiny_bert_no_dropout_dir(tmp_path_factory):
    """The tiny random BERT with dropout 0, for tests that compare weights across strategies."""
    return tiny.save_tiny_bert(
        str(tmp_path_factory.mktemp("tiny_bert_no_dropout")),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


@pytest.fixture(scope="session")
def tiny_family_dir(tmp_path_factory):
    """A function that returns the folder of a tiny random backbone of a model type, written once."""
    folders = {}

    def folder(model_type):
        if model_type not in folders:
            path = str(tmp_path_factory.mktemp(f"tiny_{model_type}"))
            folders[model_type] = tiny.save_tiny_backbone(model_type, path)
        return folders[model_type]

    return folder


# Modules whose tests start worker processes, train several models each or run real searches;
# `make test-fast` leaves them out (-m "not minilm and not slow"), `make test` runs them.
SLOW_MODULES = {
    "test_distributed",
    "test_recovery",
    "test_checkpoints",
    "test_launcher",
    "test_export",
    "test_graph_tokenizers",
    "test_graph_sentencepiece",
    "test_tuning",
    "test_tuning_cache",
    "test_features",
    "test_lora",
    "test_tfds",
    "test_policy_runs",
    "test_policy_table_script",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
