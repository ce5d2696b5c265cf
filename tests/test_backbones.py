import os

import pytest

import tfpeft
from tfpeft.backbones import ARCHITECTURES, architecture_spec, minilm_folder, resolve_model_path
from tfpeft.errors import BackboneNotFoundError, UnsupportedArchitectureError


def test_load_local_folder(tiny_bert_dir):
    backbone = tfpeft.load_backbone(tiny_bert_dir)
    assert backbone.config.model_type == "bert"
    assert backbone.num_blocks == 2
    assert backbone.hidden_dim == 16
    assert [part.name for part in backbone.parts()] == ["embeddings", "block_0", "block_1", "pooler"]
    assert backbone.tokenizer("goal match")["input_ids"][0] == backbone.tokenizer.cls_token_id


def test_minilm_alias_resolves_to_package_folder():
    folder = resolve_model_path("minilm")
    assert folder == minilm_folder()
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json"):
        assert os.path.isfile(os.path.join(folder, name)), name


def test_hub_name_offline_error_says_how_to_fix():
    with pytest.raises(BackboneNotFoundError) as error:
        tfpeft.load_backbone("bert-base-uncased")
    message = str(error.value)
    assert "'bert-base-uncased'" in message
    assert "Hugging Face Hub could not be reached" in message
    assert "save_pretrained" in message
    assert "minilm" in message


def test_missing_folder_error_names_path(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(BackboneNotFoundError, match="does not exist"):
        tfpeft.load_backbone(missing)


def test_folder_without_config_fails(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="config.json"):
        tfpeft.load_backbone(str(tmp_path))


def test_unsupported_model_type_lists_supported():
    with pytest.raises(UnsupportedArchitectureError) as error:
        architecture_spec("bart")
    assert "model_type='bart'" in str(error.value)
    for model_type in ARCHITECTURES:
        assert model_type in str(error.value)


def test_empty_folder_says_no_config(tmp_path):
    folder = tmp_path / "mpt-like"
    folder.mkdir()
    with pytest.raises(BackboneNotFoundError) as error:
        tfpeft.load_backbone(str(folder))
    assert str(error.value) == (
        f"The backbone folder '{folder}' has no config.json. Pass a folder written by "
        "`model.save_pretrained(folder)` and `tokenizer.save_pretrained(folder)`."
    )


def test_folder_without_tokenizer_names_files(tiny_bert_dir, tmp_path, capsys):
    import shutil

    from tfpeft.cli import main

    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    for name in os.listdir(tiny_bert_dir):
        if name in ("config.json", "tf_model.h5"):
            shutil.copy(os.path.join(tiny_bert_dir, name), folder / name)
    assert main(["inspect", "--model", str(folder)]) == 1
    assert capsys.readouterr().err == (
        f"tfpeft inspect: error: The folder '{folder}' has no tokenizer files: none of tokenizer.json, "
        "vocab.txt, vocab.json, sentencepiece.bpe.model, spiece.model, tokenizer.model. Save the "
        "tokenizer there with `AutoTokenizer.from_pretrained(name).save_pretrained(folder)`.\n"
    )


def test_alias_typo_suggests_alias_before_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BackboneNotFoundError) as error:
        resolve_model_path("minlm")
    assert str(error.value) == (
        "The backbone 'minlm' is not a folder or an alias. Did you mean the alias 'minilm'? Pass "
        "--model minilm, a folder written by save_pretrained, or a Hub name."
    )
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased"
