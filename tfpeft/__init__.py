"""tfpeft: parameter-efficient fine-tuning of Hugging Face TF transformers with tf_keras."""

from tfpeft._keras import ensure_legacy_keras

ensure_legacy_keras()

__version__ = "0.1.0"

from tfpeft.backbones import Backbone, load_backbone  # noqa: E402
from tfpeft.config import TrainingConfig  # noqa: E402
from tfpeft.data import LabelMap  # noqa: E402
from tfpeft.launcher import launch  # noqa: E402
from tfpeft.model import build_classifier  # noqa: E402
from tfpeft.policies import Policy, apply_policy, parameter_report, parse_policy  # noqa: E402
from tfpeft.runs import TextClassifier, load  # noqa: E402
from tfpeft.training import (  # noqa: E402
    compile_classifier,
    evaluate_model,
    prepare_data,
    train,
)
from tfpeft.commands import evaluate, inspect, predict  # noqa: E402
from tfpeft.reports import compare, write_run_report, write_search_report  # noqa: E402
from tfpeft.search_space import SearchParameter  # noqa: E402
from tfpeft.tuning import TuningOptions, tune  # noqa: E402
from tfpeft.export import export  # noqa: E402

__all__ = [
    "Backbone",
    "LabelMap",
    "Policy",
    "SearchParameter",
    "TextClassifier",
    "TrainingConfig",
    "TuningOptions",
    "apply_policy",
    "build_classifier",
    "compare",
    "compile_classifier",
    "evaluate",
    "evaluate_model",
    "export",
    "inspect",
    "launch",
    "load",
    "load_backbone",
    "parameter_report",
    "parse_policy",
    "predict",
    "prepare_data",
    "train",
    "tune",
    "write_run_report",
    "write_search_report",
]
