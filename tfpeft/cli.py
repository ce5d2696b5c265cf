"""The ``tfpeft`` command line. It only parses arguments and calls the Python API."""

import argparse
import dataclasses
import json
import logging
import sys

# Short flags for long field names; the long flag works too.
FLAG_ALIASES = {"model_name_or_path": ["--model"]}


def _add_config_flags(parser):
    from tfpeft.config import TrainingConfig, field_type

    group = parser.add_argument_group("training config (override --config; names as in TrainingArguments)")
    for field in dataclasses.fields(TrainingConfig):
        flags = [f"--{field.name.replace('_', '-')}"] + FLAG_ALIASES.get(field.name, [])
        default_text = "unset" if field.default is None else repr(field.default)
        # argparse treats % as a format character; TFDS slices such as train[:90%] contain it.
        help_text = f"{field.metadata['help']} (default: {default_text})".replace("%", "%%")
        kind = field_type(field)
        if kind is bool and field.default is True:
            # A setting that is on by default gets only a flag that turns it off.
            flags = [f"--no-{field.name.replace('_', '-')}"]
            help_text = f"Turn off, which is on by default: {field.metadata['help']}".replace("%", "%%")
            group.add_argument(*flags, dest=field.name, action="store_false", default=None, help=help_text)
        elif kind is bool:
            group.add_argument(*flags, dest=field.name, action="store_true", default=None, help=help_text)
        else:
            group.add_argument(*flags, dest=field.name, type=kind, default=None, help=help_text, metavar=kind.__name__.upper())
    group.add_argument(
        "--evaluation-strategy", dest="evaluation_strategy", default=None, help="Deprecated name of --eval-strategy."
    )


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="tfpeft",
        description="Parameter-efficient fine-tuning of Hugging Face TF transformers with tf_keras.",
    )
    parser.add_argument("--version", action="store_true", help="Print the tfpeft version and exit.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="Fine-tune a backbone and save a run folder.")
    train.add_argument("--config", help="TOML file of TrainingConfig fields; flags override it.")
    train.add_argument("--quiet", action="store_true", help="Print only warnings and errors.")
    _add_config_flags(train)

    evaluate = commands.add_parser("evaluate", help="Evaluate a run on a dataset; writes RUN_DIR/eval/NAME/.")
    evaluate.add_argument("run_dir", help="A finished run folder.")
    evaluate.add_argument("--dataset", help="Built-in dataset (bbc_news, tweets) or tfds:NAME, split as in the run.")
    evaluate.add_argument("--split", help="For --dataset only: test, validation, train or all (default: test, the run's own test split).")
    evaluate.add_argument("--test-file", help="A CSV, TSV, JSON Lines or Parquet file, evaluated whole.")
    evaluate.add_argument("--text-column", help="Text column of --test-file (default: the run's).")
    evaluate.add_argument("--label-column", help="Label column of --test-file (default: the run's).")
    evaluate.add_argument("--encoding", help="Encoding of --test-file (default: the run's).")
    evaluate.add_argument("--name", help="Folder name under RUN_DIR/eval/ (default: from the data).")
    evaluate.add_argument("--overwrite", action="store_true", help="Replace an earlier RUN_DIR/eval/NAME/.")
    evaluate.add_argument("--quiet", action="store_true", help="Print only warnings and errors.")

    predict = commands.add_parser("predict", help="Predict labels; prints one JSON object per text.")
    predict.add_argument(
        "run_dir", help="A finished run folder, or a model folder written by tfpeft export (NAME/VERSION, or NAME for its highest version)."
    )
    predict.add_argument("--text", action="append", default=[], help="A text to classify; repeat for more.")
    predict.add_argument(
        "--text-pair",
        action="append",
        default=None,
        help="For runs trained on sentence pairs: the second text of the pair, one per --text, in order.",
    )
    predict.add_argument("--input-file", help="A text file with one text per line.")
    predict.add_argument("--encoding", default="utf-8", help="Text encoding of --input-file, e.g. latin-1 (default: utf-8).")
    predict.add_argument(
        "--encoding-errors", default="strict",
        help="Undecodable bytes in --input-file: strict (fail) or replace (with U+FFFD) (default: strict).",
    )
    predict.add_argument("--batch-size", type=int, help="Texts per batch (default: the run's eval batch size).")

    compare = commands.add_parser(
        "compare", help="Compare run folders; prints a table, writes comparison.csv and comparison.png."
    )
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Finished run folders, in table order.")
    compare.add_argument("--output-dir", default=".", help="Folder for comparison.csv and comparison.png (default: the current folder).")
    compare.add_argument("--overwrite", action="store_true", help="Replace an earlier comparison.csv and comparison.png there.")
    compare.add_argument("--quiet", action="store_true", help="Print only warnings and errors.")
    tune = commands.add_parser("tune", help="Search training settings with KerasTuner; writes OUTPUT_DIR/tuning/.")
    tune.add_argument("--config", help="TOML file of TrainingConfig fields with optional [search] and [tuning] tables.")
    tune.add_argument(
        "--search",
        action="append",
        default=None,
        metavar="NAME=SPEC",
        help="A searched setting, repeatable: learning_rate=log:1e-5:1e-3, unfreeze_depth=int:0:6, "
        "num_train_epochs=choice:1,2,3, weight_decay=float:0:0.1:0.05. Replaces the [search] table. "
        "Default: learning_rate=log:1e-5:1e-3 and unfreeze_depth from 0 to the number of blocks.",
    )
    tune.add_argument("--tuner", help="Oracle: random, bayesian, hyperband or grid (default: random).")
    tune.add_argument("--max-trials", type=int, help="Trials to run (default: 10; grid: every combination); not for hyperband.")
    tune.add_argument("--executions-per-trial", type=int, help="Trainings per trial, averaged (default: 1).")
    tune.add_argument("--max-epochs", type=int, help="Hyperband's largest epoch budget (default: num_train_epochs).")
    tune.add_argument("--factor", type=int, help="Hyperband's reduction factor (default: 3).")
    tune.add_argument("--objective", help="val_macro_f1 (default), val_accuracy or val_loss.")
    tune.add_argument("--retrain-best", action="store_true", help="Train the best config into OUTPUT_DIR/best/ and test it.")
    tune.add_argument("--quiet", action="store_true", help="Print only warnings and errors.")
    _add_config_flags(tune)
    launch = commands.add_parser(
        "launch", help="Run a command as N local workers of one multi-worker cluster (127.0.0.1)."
    )
    launch.add_argument("--workers", type=int, required=True, metavar="N", help="Number of worker processes; worker 0 is the chief.")
    launch.add_argument("--timeout", type=float, metavar="SECONDS", help="Stop every worker after this many seconds (default: no limit).")
    launch.add_argument("worker_command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="The command each worker runs, e.g. -- tfpeft train --config run.toml.")
    export = commands.add_parser("export", help="Export a run as a SavedModel for TF Serving; writes TO/VERSION/.")
    export.add_argument("run_dir", help="A finished run folder.")
    export.add_argument("--to", required=True, help="Model folder MODELS_DIR/NAME, the one TF Serving watches.")
    export.add_argument(
        "--version", type=int, dest="export_version",
        help="Version folder to write (default: the highest existing one plus 1).",
    )
    export.add_argument("--quiet", action="store_true", help="Print only warnings and errors.")

    cache = commands.add_parser("cache", help="Show or clear the feature cache (folder: TFPEFT_CACHE_DIR).")
    cache.add_argument("action", choices=("info", "clear"), help="info: folder, files and size; clear: delete every file.")
    cache.add_argument("--json", action="store_true", help="Print info as JSON.")

    inspect = commands.add_parser("inspect", help="Print the trainable-parameter report of a policy.")
    inspect.add_argument("--model", default="minilm", help="Backbone folder, Hub name or alias (default: minilm).")
    inspect.add_argument(
        "--policy", default="last_n:2",
        help="Freezing policy: head, last_n:K, full, bitfit, layernorm, embeddings_frozen, "
        "pattern:include=REGEX,exclude=REGEX or lora:r=8,alpha=16,target_modules=query|value "
        "(default: last_n:2).",
    )
    inspect.add_argument("--pooling", default="mean", help="Pooling: mean, cls, last or pooler (default: mean).")
    inspect.add_argument("--num-labels", type=int, default=2, help="Number of classes of the head (default: 2).")
    inspect.add_argument("--weights", action="store_true", help="Also list every variable by stable name, the names pattern policies match.")
    inspect.add_argument("--json", action="store_true", help="Print the report as JSON.")
    return parser


def _configure_logging(quiet):
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tfpeft").setLevel(logging.WARNING if quiet else logging.INFO)


def _config_overrides(args):
    from tfpeft.config import TrainingConfig

    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TrainingConfig)
        if getattr(args, field.name) is not None
    }
    if args.evaluation_strategy is not None:
        # One log line naming the flag, instead of the Python warning about the field name.
        logging.getLogger("tfpeft.cli").warning(
            "--evaluation-strategy is deprecated, as in transformers; use --eval-strategy %s.",
            args.evaluation_strategy,
        )
        overrides.setdefault("eval_strategy", args.evaluation_strategy)
    return overrides


def _run_train(args):
    import tfpeft
    from tfpeft.config import TrainingConfig

    overrides = _config_overrides(args)
    if args.config:
        config = TrainingConfig.from_toml(args.config, **overrides)
    else:
        config = TrainingConfig.from_dict({}, source="command-line flags", **overrides)
    tfpeft.train(config, verbose=0 if args.quiet else 1)


def _run_tune(args):
    import tfpeft
    from tfpeft.config import TrainingConfig
    from tfpeft.tuning import TuningOptions, read_tuning_file

    settings, space, option_values = ({}, None, {})
    if args.config:
        settings, space, option_values = read_tuning_file(args.config)
    source = args.config or "command-line flags"
    config = TrainingConfig.from_dict(settings, source=source, **_config_overrides(args))
    for name in ("tuner", "max_trials", "executions_per_trial", "max_epochs", "factor", "objective"):
        if getattr(args, name) is not None:
            option_values[name] = getattr(args, name)
    space = args.search if args.search is not None else (space or None)
    tfpeft.tune(
        config,
        space=space,
        options=TuningOptions(**option_values),
        retrain_best=args.retrain_best,
        verbose=0 if args.quiet else 1,
    )


def _read_texts(args):
    from tfpeft.data.files import decode_file

    texts = list(args.text)
    if args.input_file:
        try:
            text = decode_file(args.input_file, args.encoding, args.encoding_errors)
            texts += [line.rstrip("\r") for line in text.split("\n") if line.strip()]
        except OSError as error:
            raise SystemExit(f"tfpeft predict: cannot read --input-file {args.input_file!r}: {error}")
    if not texts and args.input_file:
        raise SystemExit(f"tfpeft predict: --input-file {args.input_file!r} contains no text line; put one text on each line.")
    if not texts:
        raise SystemExit("tfpeft predict: no texts; pass --text TEXT or --input-file FILE.")
    return texts


def _run_predict(args):
    import tfpeft

    records = tfpeft.predict(args.run_dir, _read_texts(args), batch_size=args.batch_size, text_pairs=args.text_pair)
    for record in records:
        print(json.dumps(record, ensure_ascii=False))


def _run_evaluate(args):
    import tfpeft

    tfpeft.evaluate(
        args.run_dir,
        dataset=args.dataset,
        test_file=args.test_file,
        split=args.split,
        name=args.name,
        text_column=args.text_column,
        label_column=args.label_column,
        encoding=args.encoding,
        overwrite=args.overwrite,
        verbose=0 if args.quiet else 1,
    )


def _run_compare(args):
    import tfpeft

    tfpeft.compare(args.run_dirs, output_dir=args.output_dir, overwrite=args.overwrite, verbose=0 if args.quiet else 1)


def _run_inspect(args):
    import tfpeft

    report = tfpeft.inspect(args.model, args.policy, pooling=args.pooling, num_labels=args.num_labels)
    if args.json:
        print(json.dumps(report.to_dict(weights=args.weights), indent=2))
        return
    print(f"Policy {args.policy} on {args.model}:\n{report.format()}")
    if args.weights:
        print(f"\n{report.format_weights()}")


def _run_cache(args):
    from tfpeft.features import FeatureStore

    store = FeatureStore()
    if args.action == "clear":
        print(f"Deleted {store.clear()} feature cache files from {store.folder}")
        return
    info = store.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(
        f"Feature cache {info['folder']}: {info['files']} files, {info['bytes'] / 2**20:.1f} MB "
        f"of {info['size_limit_bytes'] / 2**20:g} MB (TFPEFT_CACHE_SIZE_MB)"
    )
    for entry in info["entries"]:
        print(f"  {entry['file']}  {entry['bytes'] / 2**20:8.1f} MB  last used {entry['last_used']}")


def _run_launch(args):
    import tfpeft

    command = args.worker_command[1:] if args.worker_command[:1] == ["--"] else args.worker_command
    tfpeft.launch(command, args.workers, timeout=args.timeout)


def _run_export(args):
    import tfpeft

    tfpeft.export(args.run_dir, args.to, version=args.export_version, verbose=0 if args.quiet else 1)


COMMANDS = {
    "train": _run_train,
    "tune": _run_tune,
    "launch": _run_launch,
    "evaluate": _run_evaluate,
    "predict": _run_predict,
    "compare": _run_compare,
    "inspect": _run_inspect,
    "export": _run_export,
    "cache": _run_cache,
}


def main(argv=None):
    """Run the ``tfpeft`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import tfpeft

        print(tfpeft.__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2

    _configure_logging(getattr(args, "quiet", False))
    from tfpeft.errors import TfpeftError

    try:
        COMMANDS[args.command](args)
    except TfpeftError as error:
        print(f"tfpeft {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
