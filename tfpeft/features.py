"""Feature caching: run the frozen bottom of the backbone once, train the top on its output.

Under ``head`` and ``last_n:K`` the bottom of the network (the embeddings and the lower
blocks) is frozen and runs in inference mode, so its output depends only on the input. This
module splits the classifier at the cut, the first depth that trains:

- for ``head`` the whole backbone is frozen, and the cache holds the pooled features, one
  vector per text;
- for ``last_n:K`` the cache holds the hidden states that enter the lowest block a trained
  part runs at (block N-K; block 0 where a trained shared part runs at every depth), one row
  per real token, on every registered family.

A small Keras model (``build_top_model``) then runs only the trained blocks (``BlockRunner``
calls each family's blocks as its main layer does), the pooling and the head on the cached
tensors. It is built from the full classifier's own layers, so training it updates the full
classifier's variables: evaluation, saving and export see the trained weights with nothing
copied back. With ``frozen_dropout=True`` the frozen bottom is random while training, and the
cache is off.

``FeatureSource`` serves every cut of one backbone and data set. A search whose trials freeze
at different depths computes the features once at the shallowest cut, and derives each deeper
cut (``derive_features``) by running only the frozen blocks between the two, once; the result
is stored under the deeper cut's own key, as if it had been computed from the token ids.

Caches live in ``TFPEFT_CACHE_DIR`` (default ``~/.cache/tfpeft``, or ``$XDG_CACHE_HOME/tfpeft``),
one ``.npz`` file per split and cut, named by a hash of everything the features depend on:
the backbone weights, the tokenizer, the token ids of the split (which follow from the texts,
``max_seq_length`` and the truncation), the cut, the pooling of pooled features and the dtype
policy. Any change gives another name, so a stale cache is never read. The folder is kept under ``TFPEFT_CACHE_SIZE_MB``
(default 8192) by deleting the least recently used files.
"""

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import tempfile
import zipfile

import numpy as np
import tensorflow as tf
import tf_keras

from tfpeft.block_runners import BlockRunner, supported_families
from tfpeft.data.pipeline import batch_examples, length_boundaries
from tfpeft.errors import ConfigError

logger = logging.getLogger("tfpeft.features")

CACHE_DIR_VARIABLE = "TFPEFT_CACHE_DIR"
CACHE_SIZE_VARIABLE = "TFPEFT_CACHE_SIZE_MB"
DEFAULT_CACHE_SIZE_MB = 8192
# Bumped whenever the file layout or what a key covers changes, so old files are never read.
# Cache files are named by their key, a SHA-256 in hex.
CACHE_FILE_NAME = re.compile(r"[0-9a-f]{64}\.npz")
CACHE_FORMAT = 2


def cache_dir():
    """Return the feature cache folder: ``TFPEFT_CACHE_DIR`` or the user's cache folder."""
    folder = os.environ.get(CACHE_DIR_VARIABLE)
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        folder = os.path.join(base, "tfpeft")
    return os.path.join(os.path.expanduser(folder), "features")


def cache_size_limit():
    """Return the cache size limit in bytes, from ``TFPEFT_CACHE_SIZE_MB``."""
    value = os.environ.get(CACHE_SIZE_VARIABLE)
    if value is None:
        return DEFAULT_CACHE_SIZE_MB * 2**20
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1
    if megabytes < 0:
        raise ConfigError(
            f"{CACHE_SIZE_VARIABLE}={value!r} is not a size: set it to megabytes, e.g. "
            f"{DEFAULT_CACHE_SIZE_MB}, or unset it."
        )
    return int(megabytes * 2**20)


class FeatureStore:
    """A folder of cached feature files with a size limit and least-recently-used eviction.

    A read refreshes a file's modification time, which eviction takes as its last use.

    Args:
        folder: str or None. Default ``cache_dir()``.
        size_limit: int or None. Bytes; default ``cache_size_limit()``.
    """

    def __init__(self, folder=None, size_limit=None):
        self.folder = folder or cache_dir()
        self.size_limit = cache_size_limit() if size_limit is None else size_limit

    def path(self, key):
        return os.path.join(self.folder, f"{key}.npz")

    def load(self, key):
        """Return the arrays stored under ``key``, or None when there is no such file."""
        path = self.path(key)
        try:
            with np.load(path) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            # A file cut short by a full disk or a killed process is computed again.
            logger.warning("Ignoring the unreadable feature cache %s (%s)", path, error)
            return None
        os.utime(path)
        return arrays

    def save(self, key, arrays):
        """Store ``arrays`` under ``key``, then evict old files beyond the size limit.

        Returns False, with a warning, when the folder cannot be written: the caller keeps its
        arrays in memory, so the run goes on, only without storing them for the next one.
        """
        try:
            os.makedirs(self.folder, exist_ok=True)
            # Written beside the final name and renamed, so a reader never sees half a file.
            handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        except OSError as error:
            logger.warning(
                "Feature cache: cannot write to %s (%s), so the features are kept for this run "
                "only. Set %s to a writable folder, or pass --no-feature-cache.",
                self.folder, error, CACHE_DIR_VARIABLE,
            )
            return False
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, **arrays)
            os.replace(temporary, self.path(key))
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        self.evict(keep=key)
        return True

    def entries(self):
        """Return ``(path, bytes, last use)`` of every cache file, least recently used first."""
        if not os.path.isdir(self.folder):
            return []
        found = []
        for name in os.listdir(self.folder):
            # Only files named by a cache key: eviction and clear never touch other files.
            if CACHE_FILE_NAME.fullmatch(name):
                path = os.path.join(self.folder, name)
                status = os.stat(path)
                found.append((path, status.st_size, status.st_mtime))
        return sorted(found, key=lambda entry: entry[2])

    def evict(self, keep=None):
        """Delete the least recently used files until the folder fits the size limit."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for path, size, _ in entries:
            if total <= self.size_limit:
                break
            if keep is not None and path == self.path(keep):
                continue
            os.remove(path)
            total -= size
            logger.info("Evicted the feature cache %s (%d bytes) to stay under the size limit", path, size)

    def info(self):
        """Return the folder, the number of files, their bytes, the size limit and each file.

        ``entries`` lists ``{"file", "bytes", "last_used"}`` (an ISO 8601 UTC time), least
        recently used first.
        """
        entries = self.entries()
        return {
            "folder": self.folder,
            "files": len(entries),
            "bytes": sum(size for _, size, _ in entries),
            "size_limit_bytes": self.size_limit,
            "entries": [
                {
                    "file": os.path.basename(path),
                    "bytes": size,
                    "last_used": datetime.datetime.fromtimestamp(used, datetime.timezone.utc).isoformat(timespec="seconds"),
                }
                for path, size, used in entries
            ],
        }

    def clear(self):
        """Delete every cache file; return how many were deleted."""
        entries = self.entries()
        for path, _, _ in entries:
            os.remove(path)
        return len(entries)


@dataclasses.dataclass(frozen=True)
class Cut:
    """Where the classifier is split: ``pooled`` features, or hidden states at ``depth``."""

    kind: str  # "pooled" or "hidden"
    depth: int

    def describe(self, backbone):
        if self.kind == "pooled":
            return "the pooled features of the frozen backbone"
        return f"the hidden states entering block {self.depth} of {backbone.num_blocks}"


def find_cut(backbone, policy, pooling, frozen_dropout=False):
    """Return the ``Cut`` for ``policy``, or None (with one log line) where caching cannot apply.

    The cut is the lowest depth at which a trained part runs. Parts that run at every depth
    and train (a shared position table under ``last_n`` with K equal to the block count,
    ALBERT's shared block) put the cut at depth 0, where only the embeddings' output is cached.
    """
    if frozen_dropout:
        logger.info("Feature cache off: frozen_dropout=True makes the frozen part random while training")
        return None
    if policy.kind not in ("head", "last_n"):
        logger.info("Feature cache off: policy %s trains variables throughout the backbone", policy.name)
        return None
    trained = policy.trainable_part_names(backbone, pooling)
    if not trained:
        return Cut("pooled", backbone.num_blocks)
    model_type = backbone.config.model_type
    if model_type not in supported_families():
        logger.info("Feature cache off: tfpeft cannot run the blocks of a %s backbone apart", model_type)
        return None
    parts = {part.name: part for part in backbone.parts()}
    below = sorted(name for name in trained if parts[name].role in ("embeddings", "other"))
    if below:
        logger.info("Feature cache off: policy %s trains parts %s below every block", policy.name, below)
        return None
    depths = [depth for name in trained for depth in parts[name].depths]
    if not depths:
        logger.info("Feature cache off: policy %s trains only %s, which no block depth runs", policy.name, sorted(trained))
        return None
    depth = min(depths)
    shared = sorted(name for name in trained if parts[name].role == "shared_block" and depth == 0)
    if shared and policy.num_blocks < backbone.num_blocks:
        logger.info(
            "Feature cache: %s trains and runs at every depth from 0 up, so the cache holds only the "
            "embeddings' output", ", ".join(shared),
        )
    return Cut("hidden", depth)


def _hash_arrays(digest, arrays):
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())


def backbone_fingerprint(backbone):
    """Return a SHA-256 of the backbone's weights, with their stable names, and its tokenizer."""
    digest = hashlib.sha256()
    for name, variable in backbone.named_variables():
        digest.update(name.encode())
        _hash_arrays(digest, [variable.numpy()])
    tokenizer = backbone.tokenizer
    vocabulary = sorted(tokenizer.get_vocab().items())
    digest.update(type(tokenizer).__name__.encode())
    digest.update(json.dumps(vocabulary, ensure_ascii=False).encode())
    digest.update(json.dumps(tokenizer.model_input_names).encode())
    return digest.hexdigest()


def feature_key(backbone_hash, encoded, cut, settings):
    """Return the cache key of one split's features: a hex SHA-256.

    Args:
        backbone_hash: str. ``backbone_fingerprint`` of the backbone.
        encoded: ``EncodedTexts`` of the split.
        cut: ``Cut``.
        settings: dict. Everything else the features depend on (pooling, max_seq_length,
            truncation, dtype policy).
    """
    digest = hashlib.sha256()
    header = {"format": CACHE_FORMAT, "backbone": backbone_hash, "cut": dataclasses.asdict(cut), **settings}
    digest.update(json.dumps(header, sort_keys=True).encode())
    arrays = [encoded.input_ids, encoded.lengths]
    if encoded.token_type_ids is not None:
        arrays.append(encoded.token_type_ids)
    _hash_arrays(digest, arrays)
    return digest.hexdigest()


def _input_batches(encoded, batch_size):
    """Yield the model inputs of ``encoded``, in order, padded per batch."""
    for start in range(0, len(encoded), batch_size):
        lengths = encoded.lengths[start : start + batch_size]
        width = max(int(lengths.max()), 1)
        inputs = {
            "input_ids": encoded.input_ids[start : start + batch_size, :width],
            "attention_mask": (np.arange(width)[None, :] < lengths[:, None]).astype(np.int32),
        }
        if encoded.token_type_ids is not None:
            inputs["token_type_ids"] = encoded.token_type_ids[start : start + batch_size, :width]
        yield lengths, inputs


def compute_features(model, backbone, cut, encoded, batch_size=64, with_type_ids=False, task=None):
    """Run the frozen bottom over ``encoded`` in inference mode; return the feature arrays.

    ``task``, a ``tfpeft.progress.ProgressTask`` or None, is advanced by the texts of each batch.

    Returns a dict: ``values`` (float32; one row per text for pooled features, one row per real
    token, texts one after another, for hidden states) and ``lengths`` (tokens per text).
    """
    if cut.kind == "pooled":
        bottom = tf_keras.Model(model.inputs, model.get_layer("head_dropout").input)
        run = tf.function(lambda inputs: bottom(inputs, training=False), reduce_retracing=True)
    else:
        call_arguments = dict(backbone.spec.call_arguments)

        def hidden_at_cut(inputs):
            outputs = backbone.main_layer(**inputs, **call_arguments, output_hidden_states=True, training=False)
            return outputs.hidden_states[cut.depth]

        run = tf.function(hidden_at_cut, reduce_retracing=True)

    def outputs():
        for lengths, inputs in _input_batches(encoded, batch_size):
            if not with_type_ids:
                inputs.pop("token_type_ids", None)
            yield run({k: tf.constant(v) for k, v in inputs.items()}), lengths

    return _collect_features(outputs(), cut.kind == "pooled", backbone.hidden_dim, encoded.lengths, task)


def _collect_features(outputs, pooled, hidden_dim, lengths, task=None):
    """Return the feature arrays of a split from its ``(output, batch lengths)`` pairs, in order.

    Pooled outputs are one row per text; hidden states keep one row per real token, texts one
    after another.
    """
    values = []
    for output, batch_lengths in outputs:
        output = tf.cast(output, tf.float32).numpy()
        if pooled:
            values.append(output)
        else:
            values.extend(row[:length] for row, length in zip(output, batch_lengths))
        if task is not None:
            task.advance(len(batch_lengths))
    values = np.concatenate(values) if values else np.zeros((0, hidden_dim), np.float32)
    return {"values": values.astype(np.float32), "lengths": lengths.astype(np.int32)}


def _pool(model, backbone, pooling, hidden, mask):
    """Pool hidden states as ``model`` does: its pooling layer, or the backbone's pooler."""
    if pooling == "pooler":
        # ALBERT's pooler takes the first token; the other families' poolers pick it themselves.
        return backbone.pooler(hidden[:, 0] if backbone.config.model_type == "albert" else hidden)
    return model.get_layer(f"{pooling}_pooling")(hidden, mask)


def _deriver(model, backbone, source, cut, pooling):
    """Return a ``tf.function`` that runs the frozen blocks from ``source`` up to ``cut``."""
    if source.kind != "hidden" or not (cut.kind == "pooled" or cut.depth >= source.depth):
        raise ValueError(f"Cannot derive {cut} from {source}")
    pooled = cut.kind == "pooled"
    runner = BlockRunner(backbone, source.depth, backbone.num_blocks if pooled else cut.depth, finish=pooled)

    def run(hidden, mask):
        hidden = runner(hidden, mask, training=False)
        return _pool(model, backbone, pooling, hidden, mask) if pooled else hidden

    return tf.function(run, reduce_retracing=True)


def derive_features(model, backbone, source, cut, arrays, pooling, batch_size=64, task=None, run=None):
    """Run the frozen blocks between ``source`` and ``cut`` over cached hidden states.

    A deeper freeze needs the features at a higher cut, which are the cached ones after a few
    more frozen blocks: running those blocks once, in inference mode, gives them without
    running the embeddings and the blocks below ``source`` again. ``arrays`` are the
    ``compute_features`` arrays of one split at ``source`` (a hidden cut). The result has the
    same form at ``cut`` (hidden states at a higher depth, or the pooled features). ``run``
    is a function from ``_deriver`` to reuse across splits, or None for a new one.
    """
    run = run or _deriver(model, backbone, source, cut, pooling)
    pooled = cut.kind == "pooled"
    lengths = arrays["lengths"]
    rows = np.split(arrays["values"], np.cumsum(lengths)[:-1]) if len(lengths) else []

    def outputs():
        for start in range(0, len(lengths), batch_size):
            batch_lengths = lengths[start : start + batch_size]
            width = max(int(batch_lengths.max()), 1)
            hidden = np.zeros((len(batch_lengths), width, backbone.hidden_dim), np.float32)
            for index, row in enumerate(rows[start : start + batch_size]):
                hidden[index, : len(row)] = row
            mask = (np.arange(width)[None, :] < batch_lengths[:, None]).astype(np.int32)
            yield run(tf.constant(hidden), tf.constant(mask)), batch_lengths

    return _collect_features(outputs(), pooled, backbone.hidden_dim, lengths, task)


def build_top_model(model, backbone, cut, pooling):
    """Return a tf_keras model that runs what trains above ``cut``, sharing ``model``'s layers.

    Its inputs are ``{"features"}`` for pooled features and ``{"features", "attention_mask"}``
    for hidden states; its output is the logits of ``model``.
    """
    head_dropout, head = model.get_layer("head_dropout"), model.get_layer("head")
    width = backbone.hidden_dim
    if cut.kind == "pooled":
        features = tf_keras.Input(shape=(width,), dtype=tf.float32, name="features")
        logits = head(head_dropout(features))
        return tf_keras.Model({"features": features}, logits, name="top_of_classifier")

    features = tf_keras.Input(shape=(None, width), dtype=tf.float32, name="features")
    mask = tf_keras.Input(shape=(None,), dtype=tf.int32, name="attention_mask")
    hidden = BlockRunner(backbone, cut.depth, name="top_blocks")(features, mask)
    pooled = _pool(model, backbone, pooling, hidden, mask)
    logits = head(head_dropout(pooled))
    return tf_keras.Model({"features": features, "attention_mask": mask}, logits, name="top_of_classifier")


class CachedFeatures:
    """The cached features of every split and the top model that trains on them.

    Built by ``prepare_feature_cache``. ``dataset`` mirrors ``PreparedData.dataset``: the same
    seed and bucketing give the same examples in the same batches, so a run on the cache takes
    the same steps as one on the token ids.
    """

    def __init__(self, cut, top_model, arrays, data):
        self.cut = cut
        self.model = top_model
        self.arrays = arrays  # split name -> {"values", "lengths"}
        self.data = data

    @property
    def splits(self):
        return self.data.splits

    @property
    def label_ids(self):
        return self.data.label_ids

    @property
    def label_map(self):
        return self.data.label_map

    def dataset(self, split, batch_size, *, shuffle=False, seed=None, with_labels=True, bucket_by_length=False):
        """Return a ``tf.data`` pipeline of ``split``'s cached features for ``self.model``."""
        values, lengths = self.arrays[split]["values"], self.arrays[split]["lengths"]
        if self.cut.kind == "hidden":
            values = tf.RaggedTensor.from_row_lengths(values, lengths.astype(np.int64))
        tensors = (values, lengths)
        if with_labels:
            tensors += (np.asarray(self.data.label_ids[split], dtype=np.int32),)
        dataset = tf.data.Dataset.from_tensor_slices(tensors)
        if shuffle:
            dataset = dataset.shuffle(len(lengths), seed=seed, reshuffle_each_iteration=True)
        if self.cut.kind == "hidden":
            dataset = dataset.map(lambda value, *rest: (value.to_tensor() if isinstance(value, tf.RaggedTensor) else value, *rest))
        padding_values = (tf.constant(0.0), 0) + ((0,) if with_labels else ())
        dataset = batch_examples(
            dataset, batch_size, padding_values,
            length_of=lambda value, length, *label: length,
            boundaries=length_boundaries(lengths) if bucket_by_length else None,
        )
        hidden = self.cut.kind == "hidden"

        def to_inputs(value, length, *label):
            features = {"features": value}
            if hidden:
                features["attention_mask"] = tf.sequence_mask(length, tf.shape(value)[1], dtype=tf.int32)
            return (features, label[0]) if label else features

        return dataset.map(to_inputs).prefetch(tf.data.AUTOTUNE)


class FeatureSource:
    """The features of one backbone and data set at any cut, each computed or derived once.

    Without ``source_depth``, every cut is computed from the token ids. ``source_depth`` is the
    shallowest hidden cut a search needs: any cut above it is derived from the features there
    by running only the frozen blocks in between (``derive_features``). A derived cut is stored
    under its own key, so a later run at that cut reads it directly. The backbone must
    hold the weights the features are keyed by (its pretrained ones) whenever a cut is computed
    or derived.

    Args:
        model: the full classifier.
        backbone: its ``Backbone``.
        data: ``PreparedData``.
        config: ``TrainingConfig``; ``max_seq_length``, ``truncation`` and ``pooling`` count.
        store: ``FeatureStore`` or None for the default folder.
        batch_size: int. Texts per batch of the frozen pass.
        progress: ``Progress`` or None.
        source_depth: int or None.
    """

    def __init__(self, model, backbone, data, config, *, store=None, batch_size=64, progress=None, source_depth=None):
        self.model = model
        self.backbone = backbone
        self.data = data
        self.config = config
        self.store = store or FeatureStore()
        self.batch_size = batch_size
        self.progress = progress
        self.source_depth = source_depth
        self.backbone_hash = backbone_fingerprint(backbone)

    def _settings(self, cut, pooling):
        settings = {
            "model_type": self.backbone.config.model_type,
            "max_seq_length": self.config.max_seq_length,
            "truncation": self.config.truncation,
            "dtype_policy": tf_keras.mixed_precision.global_policy().name,
            "token_type_ids": self.data.token_type_ids,
        }
        # Hidden states do not depend on the pooling, so every pooling shares them.
        if cut.kind == "pooled":
            settings["pooling"] = pooling
        return settings

    def _task(self, title, total):
        return self.progress.task(title, total, "texts") if self.progress else None

    def arrays(self, cut, pooling):
        """Return ``{split: {"values", "lengths"}}`` at ``cut``: read, derived or computed."""
        source = None
        if self.source_depth is not None and (cut.kind == "pooled" or cut.depth > self.source_depth):
            source = Cut("hidden", self.source_depth)
        result = {}
        source_arrays = run = None
        for split, encoded in self.data.encoded.items():
            key = feature_key(self.backbone_hash, encoded, cut, self._settings(cut, pooling))
            stored = self.store.load(key)
            if stored is not None:
                logger.info("Feature cache: reused %s of the %s split (%s)", cut.describe(self.backbone), split, key[:12])
            elif source is not None:
                if source_arrays is None:
                    source_arrays = self.arrays(source, pooling)
                    run = _deriver(self.model, self.backbone, source, cut, pooling)
                task = self._task(f"Features of the {split} split from the cache", len(encoded))
                stored = derive_features(
                    self.model, self.backbone, source, cut, source_arrays[split], pooling, self.batch_size,
                    task=task, run=run,
                )
                self.store.save(key, stored)
                logger.info(
                    "Feature cache: derived %s of the %s split from %s (%s)",
                    cut.describe(self.backbone), split, source.describe(self.backbone), key[:12],
                )
            else:
                task = self._task(f"Features of the {split} split", len(encoded))
                stored = compute_features(
                    self.model, self.backbone, cut, encoded, self.batch_size, self.data.token_type_ids, task=task
                )
                self.store.save(key, stored)
                logger.info("Feature cache: computed %s of the %s split (%s)", cut.describe(self.backbone), split, key[:12])
            result[split] = stored
        return result

    def cached(self, cut, pooling, top_model=None):
        """Return ``CachedFeatures`` at ``cut``, with ``top_model`` or a new one from ``build_top_model``."""
        arrays = self.arrays(cut, pooling)
        top_model = top_model or build_top_model(self.model, self.backbone, cut, pooling)
        return CachedFeatures(cut, top_model, arrays, self.data)


def prepare_feature_cache(model, backbone, policy, data, config, *, store=None, batch_size=64, progress=None):
    """Compute or load the features of every split; return ``CachedFeatures`` or None.

    None means training runs on the full model: the cache is switched off in ``config``, or
    ``find_cut`` found no cut for this policy and family (it logs why).
    """
    if not config.feature_cache:
        return None
    cut = find_cut(backbone, policy, config.pooling, config.frozen_dropout)
    if cut is None:
        return None
    source = FeatureSource(model, backbone, data, config, store=store, batch_size=batch_size, progress=progress)
    return source.cached(cut, config.pooling)
