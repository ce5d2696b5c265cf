"""Data for training and evaluation: sources, label maps, splits and the tf.data pipeline."""

from tfpeft.data.labels import LabelMap
from tfpeft.data.pipeline import EncodedTexts, encode_texts, encode_texts_in_chunks, make_dataset
from tfpeft.data.sources import BUILTIN_DATASETS, TextExamples, load_builtin, read_file
from tfpeft.data.splits import DataSplits, split_examples

__all__ = [
    "BUILTIN_DATASETS",
    "DataSplits",
    "EncodedTexts",
    "LabelMap",
    "TextExamples",
    "encode_texts",
    "encode_texts_in_chunks",
    "load_builtin",
    "make_dataset",
    "read_file",
    "split_examples",
]
