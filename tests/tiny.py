"""Tiny random backbones and toy data for fast tests, written the way users save real models."""

import os

# Special tokens first, so [PAD] is id 0 as in BERT vocabularies.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CLASS_WORDS = {
    "sport": ["goal", "match", "team", "coach", "league", "score", "player", "cup"],
    "tech": ["chip", "phone", "software", "robot", "laptop", "internet", "code", "data"],
    "politics": ["vote", "party", "election", "minister", "law", "senate", "policy", "tax"],
}
FILLER_WORDS = ["the", "a", "of", "and", "in", "to", "on", "with", "for", "today", "new", "big"]


def vocabulary(size=100):
    words = SPECIAL_TOKENS + FILLER_WORDS + [w for ws in CLASS_WORDS.values() for w in ws]
    words += [f"word{i}" for i in range(size - len(words))]
    return words


# The tiny BERT: vocab 100, hidden 16, 2 blocks of 2 heads, feed-forward 32, 64 positions.
TINY_BERT = dict(
    vocab_size=100,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=64,
    type_vocab_size=2,
)


def save_tiny_bert(folder, seed=0, **overrides):
    """Write a random tiny BERT and its WordPiece tokenizer to ``folder`` with save_pretrained."""
    import tensorflow as tf
    from transformers import BertConfig, BertTokenizerFast, TFBertModel

    os.makedirs(folder, exist_ok=True)
    vocab_path = os.path.join(folder, "vocab.txt")
    with open(vocab_path, "w", encoding="utf-8") as file:
        file.write("\n".join(vocabulary(TINY_BERT["vocab_size"])) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=vocab_path, do_lower_case=True)
    tokenizer.save_pretrained(folder)

    tf.keras.utils.set_random_seed(seed)
    model = TFBertModel(BertConfig(**{**TINY_BERT, **overrides}))
    model(model.dummy_inputs)
    model.save_pretrained(folder)
    return folder


def toy_examples(num_per_class=20, seed=0):
    """Return ``(texts, labels)``: short texts whose topic words give away the class."""
    import random

    rng = random.Random(seed)
    texts, labels = [], []
    for label, words in CLASS_WORDS.items():
        for _ in range(num_per_class):
            length = rng.randint(3, 12)
            tokens = [rng.choice(words if rng.random() < 0.5 else FILLER_WORDS) for _ in range(length)]
            tokens[rng.randrange(length)] = rng.choice(words)
            texts.append(" ".join(tokens))
            labels.append(label)
    return texts, labels


def write_csv(path, texts, labels, text_column="text", label_column="label"):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow([text_column, label_column])
        writer.writerows(zip(texts, labels))
    return path


# Tiny configs of every registered family: hidden size 16, 2 heads, feed-forward 32, 64
# positions, 2 blocks (ALBERT: 3 depths sharing 1 block). The vocabulary size is the tokenizer's.
FAMILY_CONFIGS = {
    "bert": ("BertConfig", "TFBertModel", dict(TINY_BERT, num_hidden_layers=2)),
    "roberta": ("RobertaConfig", "TFRobertaModel", dict(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
    "xlm-roberta": ("XLMRobertaConfig", "TFXLMRobertaModel", dict(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
    "distilbert": ("DistilBertConfig", "TFDistilBertModel", dict(
        dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=64)),
    "albert": ("AlbertConfig", "TFAlbertModel", dict(
        embedding_size=8, hidden_size=16, num_hidden_layers=3, num_hidden_groups=1,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)),
    "electra": ("ElectraConfig", "TFElectraModel", dict(
        embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64)),
    # The DeBERTa-v3 layout (relative attention with position buckets, a LayerNorm on the
    # relative embeddings, shared attention keys), plus the convolution of DeBERTa-v2-xlarge.
    "deberta-v2": ("DebertaV2Config", "TFDebertaV2Model", dict(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, type_vocab_size=0, relative_attention=True,
        position_buckets=8, max_relative_positions=16, pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
        conv_kernel_size=3, pad_token_id=0)),
    "mpnet": ("MPNetConfig", "TFMPNetModel", dict(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=66, relative_attention_num_buckets=8, pad_token_id=1)),
    "gpt2": ("GPT2Config", "TFGPT2Model", dict(n_embd=16, n_layer=2, n_head=2, n_inner=32, n_positions=64)),
    "t5": ("T5Config", "TFT5EncoderModel", dict(
        d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, relative_attention_num_buckets=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)),
}


def _write_wordpiece_vocab(folder, special_tokens):
    words = special_tokens + vocabulary(TINY_BERT["vocab_size"])[len(SPECIAL_TOKENS):]
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(words) + "\n")
    return path


def _train_byte_level_bpe(folder, special_tokens):
    """Train a byte-level BPE of 100 tokens on the toy texts; return (vocab.json, merges.txt)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=100, special_tokens=special_tokens, show_progress=False)
    bpe.train_from_iterator(toy_examples(num_per_class=30)[0], trainer)
    os.makedirs(os.path.join(folder, "bpe"), exist_ok=True)
    return bpe.model.save(os.path.join(folder, "bpe"))


def _train_sentencepiece(folder, **special_ids):
    """Train a 60-piece unigram SentencePiece model on the toy texts; return its path."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(toy_examples(num_per_class=30)[0]),
        model_writer=model,
        vocab_size=60,
        hard_vocab_limit=False,
        character_coverage=1.0,
        minloglevel=2,
        **special_ids,
    )
    path = os.path.join(folder, "tiny.model")
    with open(path, "wb") as file:
        file.write(model.getvalue())
    return path


def tiny_tokenizer(model_type, folder):
    """Build the tokenizer of ``model_type``'s kind (WordPiece, byte-level BPE, SentencePiece)."""
    import transformers

    if model_type in ("bert", "distilbert", "electra"):
        return transformers.BertTokenizerFast(_write_wordpiece_vocab(folder, SPECIAL_TOKENS), do_lower_case=True)
    if model_type == "mpnet":
        vocab = _write_wordpiece_vocab(folder, ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"])
        return transformers.MPNetTokenizerFast(vocab, do_lower_case=True)
    if model_type == "roberta":
        vocab, merges = _train_byte_level_bpe(folder, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        return transformers.RobertaTokenizerFast(vocab, merges)
    if model_type == "gpt2":
        vocab, merges = _train_byte_level_bpe(folder, ["<|endoftext|>"])
        return transformers.GPT2TokenizerFast(vocab, merges)
    if model_type == "albert":
        path = _train_sentencepiece(
            folder, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"]
        )
        return transformers.AlbertTokenizerFast(path)
    if model_type == "xlm-roberta":
        path = _train_sentencepiece(folder, bos_id=0, pad_id=1, eos_id=2, unk_id=3)
        return transformers.XLMRobertaTokenizerFast(path)
    if model_type == "deberta-v2":
        path = _train_sentencepiece(
            folder, pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]",
            eos_piece="[SEP]", unk_piece="[UNK]", user_defined_symbols=["[MASK]"],
        )
        return transformers.DebertaV2TokenizerFast(path)
    if model_type == "t5":
        path = _train_sentencepiece(folder, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
        return transformers.T5TokenizerFast(path, extra_ids=0)
    raise ValueError(f"no tiny tokenizer for model_type {model_type!r}")


# The config fields that set every dropout rate of a family.
DROPOUT_FIELDS = {
    "distilbert": ("dropout", "attention_dropout"),
    "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    "t5": ("dropout_rate",),
}


def no_dropout(model_type):
    """Return the config overrides that set every dropout rate of ``model_type`` to 0."""
    fields = DROPOUT_FIELDS.get(model_type, ("hidden_dropout_prob", "attention_probs_dropout_prob"))
    return {field: 0.0 for field in fields}


def save_tiny_backbone(model_type, folder, seed=0, **overrides):
    """Write a random tiny backbone of ``model_type`` and its tokenizer with save_pretrained."""
    import tempfile

    import tensorflow as tf
    import transformers

    config_class, model_class, settings = FAMILY_CONFIGS[model_type]
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = tiny_tokenizer(model_type, scratch)
        tokenizer.save_pretrained(folder)
    # Some tokenizers number special tokens after the pieces (XLM-R's <mask>).
    vocab_size = max(tokenizer.get_vocab().values()) + 1

    tf.keras.utils.set_random_seed(seed)
    config = getattr(transformers, config_class)(**{**settings, "vocab_size": vocab_size, **overrides})
    model = getattr(transformers, model_class)(config)
    model(model.dummy_inputs)
    model.save_pretrained(folder)
    return folder
