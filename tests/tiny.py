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
