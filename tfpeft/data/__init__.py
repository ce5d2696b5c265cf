"""Data for training and evaluation: sources, checks, label maps, splits and the tf.data pipeline."""

from tfpeft.data.files import read_file
from tfpeft.data.labels import LabelMap
from tfpeft.data.pipeline import EncodedTexts, encode_texts, encode_texts_in_chunks, make_dataset
from tfpeft.data.sources import (
    BUILTIN_DATASETS,
    TextExamples,
    from_dataframe,
    load_builtin,
    to_examples,
)
from tfpeft.data.splits import DataSplits, split_examples

__all__ = [
    "BUILTIN_DATASETS",
    "DataSplits",
    "EncodedTexts",
    "LabelMap",
    "TextExamples",
    "encode_texts",
    "encode_texts_in_chunks",
    "from_dataframe",
    "load_builtin",
    "make_dataset",
    "read_file",
    "split_examples",
    "to_examples",
]
