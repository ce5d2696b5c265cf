"""Rules for texts longer than ``max_seq_length``: keep the head, the tail, or both ends.

Only word pieces are cut: the special tokens the tokenizer adds ([CLS] and [SEP] for BERT,
<s> and </s> for RoBERTa) always stay. ``head`` keeps the start of the text, as the
tokenizer's own ``truncation=True`` does, and ``tail`` keeps the end. ``head_tail`` keeps a
quarter of the budget from the start and the rest from the end, because long reviews and
articles often state their verdict at the end. For a sentence pair the budget is first shared
between the two texts as the Hugging Face fast tokenizers share it under ``longest_first``.
Then each text is cut by the same rule.
"""

import logging

import numpy as np

from tfpeft.errors import ConfigError

logger = logging.getLogger("tfpeft.data")

TRUNCATIONS = ("head", "tail", "head_tail")
PERCENTILES = (50, 90, 95, 99)


def check_truncation(truncation):
    if truncation not in TRUNCATIONS:
        raise ConfigError(f"Invalid truncation={truncation!r}: use one of {', '.join(TRUNCATIONS)}.")


def share_budget(first_length, second_length, budget):
    """Return how many word pieces of each text of a pair fit into ``budget``.

    The shorter text keeps all its pieces when they fit into half the budget. Otherwise each
    text gets half, and the longer one (the second on a tie) gets the odd piece. The fast
    tokenizers of transformers 4.54 keep the same counts under ``truncation='longest_first'``.
    """
    if first_length + second_length <= budget:
        return first_length, second_length
    swapped = first_length > second_length
    shorter, longer = (second_length, first_length) if swapped else (first_length, second_length)
    if shorter > budget // 2:
        shorter = budget // 2
    longer = budget - shorter
    return (longer, shorter) if swapped else (shorter, longer)


def kept_indices(length, keep, truncation):
    """Return the indices (into ``range(length)``) of the pieces that ``truncation`` keeps."""
    if keep >= length:
        return np.arange(length)
    if truncation == "head":
        return np.arange(keep)
    if truncation == "tail":
        return np.arange(length - keep, length)
    num_head = keep // 4
    return np.concatenate([np.arange(num_head), np.arange(length - (keep - num_head), length)])


def kept_positions(sequence_ids, max_seq_length, truncation):
    """Return the positions of a full tokenization to keep so that at most ``max_seq_length`` remain.

    Args:
        sequence_ids: list. Per token, None for a special token, else 0 (first text) or 1
            (second text), as ``BatchEncoding.sequence_ids`` returns it.
        max_seq_length: int. Tokens to keep at most, special tokens included.
        truncation: str. ``head``, ``tail`` or ``head_tail``.
    """
    segments = np.array([-1 if sequence_id is None else sequence_id for sequence_id in sequence_ids])
    if len(segments) <= max_seq_length:
        return np.arange(len(segments))
    first = np.flatnonzero(segments == 0)
    second = np.flatnonzero(segments == 1)
    num_special = len(segments) - len(first) - len(second)
    budget = max_seq_length - num_special
    if budget < 0:
        raise ConfigError(
            f"max_seq_length={max_seq_length} cannot hold the {num_special} special tokens this "
            "tokenizer adds; use a larger --max-seq-length."
        )
    if len(second):
        keep_first, keep_second = share_budget(len(first), len(second), budget)
    else:
        keep_first, keep_second = budget, 0
    keep = np.ones(len(segments), dtype=bool)
    for positions, num_kept in ((first, keep_first), (second, keep_second)):
        dropped = np.ones(len(positions), dtype=bool)
        dropped[kept_indices(len(positions), num_kept, truncation)] = False
        keep[positions[dropped]] = False
    return np.flatnonzero(keep)


def cut_pieces(first, second, num_special, max_seq_length, truncation):
    """Cut the word pieces of one text (or pair) to fit, for tokenizers without ``sequence_ids``."""
    budget = max_seq_length - num_special
    if budget < 0:
        raise ConfigError(
            f"max_seq_length={max_seq_length} cannot hold the {num_special} special tokens this "
            "tokenizer adds; use a larger --max-seq-length."
        )
    if second is None:
        return [first[i] for i in kept_indices(len(first), budget, truncation)], None
    keep_first, keep_second = share_budget(len(first), len(second), budget)
    return (
        [first[i] for i in kept_indices(len(first), keep_first, truncation)],
        [second[i] for i in kept_indices(len(second), keep_second, truncation)],
    )


def length_summary(full_lengths, max_seq_length):
    """Return how many texts ``max_seq_length`` cuts and the percentiles of their token counts."""
    full_lengths = np.asarray(full_lengths)
    num_truncated = int((full_lengths > max_seq_length).sum())
    summary = {
        "num_texts": int(len(full_lengths)),
        "num_truncated": num_truncated,
        "truncated_share": num_truncated / len(full_lengths) if len(full_lengths) else 0.0,
        "max": int(full_lengths.max()) if len(full_lengths) else 0,
    }
    for percentile in PERCENTILES:
        value = np.percentile(full_lengths, percentile) if len(full_lengths) else 0
        summary[f"p{percentile}"] = int(np.ceil(value))
    return summary


def log_truncation(split, full_lengths, max_seq_length, truncation):
    """Log the share of texts longer than ``max_seq_length`` with length percentiles.

    The message is a warning when more than half the texts are cut, because then the limit
    decides what the model reads of most texts.

    Returns:
        The ``length_summary`` dict.
    """
    summary = length_summary(full_lengths, max_seq_length)
    percentiles = ", ".join(f"p{p} {summary[f'p{p}']}" for p in PERCENTILES)
    message = (
        f"{split}: {summary['num_truncated']} of {summary['num_texts']} texts "
        f"({summary['truncated_share']:.1%}) are longer than max_seq_length={max_seq_length} "
        f"tokens and are cut (truncation={truncation}); tokens per text with special tokens: "
        f"{percentiles}, max {summary['max']}"
    )
    if summary["truncated_share"] > 0.5:
        logger.warning(
            "%s. Most texts lose tokens: consider a larger --max-seq-length or --truncation head_tail",
            message,
        )
    else:
        logger.info("%s", message)
    return summary
