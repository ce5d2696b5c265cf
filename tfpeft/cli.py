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
        help_text = f"{field.metadata['help']} (default: {default_text})"
        kind = field_type(field)
        if kind is bool:
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
    train.add_argument("--quiet", action="store_true", help="Print nothing but errors.")
    _add_config_flags(train)

    evaluate = commands.add_parser("evaluate", help="Evaluate a run on a dataset; writes RUN_DIR/eval/NAME/.")
    evaluate.add_argument("run_dir", help="A finished run folder.")
    evaluate.add_argument("--dataset", help="Built-in dataset: bbc_news or tweets.")
    evaluate.add_argument("--split", default="test", help="For --dataset: test, validation, train or all (default: test, the run's own test split).")
    evaluate.add_argument("--test-file", help="A CSV or JSON Lines file, evaluated whole.")
    evaluate.add_argument("--text-column", help="Text column of --test-file (default: the run's).")
    evaluate.add_argument("--label-column", help="Label column of --test-file (default: the run's).")
    evaluate.add_argument("--encoding", help="Encoding of --test-file (default: the run's).")
    evaluate.add_argument("--name", help="Folder name under RUN_DIR/eval/ (default: from the data).")
    evaluate.add_argument("--overwrite", action="store_true", help="Replace an earlier RUN_DIR/eval/NAME/.")
    evaluate.add_argument("--quiet", action="store_true", help="Print nothing but errors.")

    predict = commands.add_parser("predict", help="Predict labels; prints one JSON object per text.")
    predict.add_argument("run_dir", help="A finished run folder.")
    predict.add_argument("--text", action="append", default=[], help="A text to classify; repeat for more.")
    predict.add_argument("--input-file", help="A text file with one text per line.")
    predict.add_argument("--batch-size", type=int, help="Texts per batch (default: the run's eval batch size).")

    inspect = commands.add_parser("inspect", help="Print the trainable-parameter report of a policy.")
    inspect.add_argument("--model", default="minilm", help="Backbone folder, Hub name or alias (default: minilm).")
    inspect.add_argument(
        "--policy", default="last_n:2",
        help="Freezing policy: head, last_n:K, full, bitfit, layernorm, embeddings_frozen or "
        "pattern:include=REGEX,exclude=REGEX (default: last_n:2).",
    )
    inspect.add_argument("--pooling", default="mean", help="Pooling: mean, cls, last or pooler (default: mean).")
    inspect.add_argument("--num-labels", type=int, default=2, help="Number of classes of the head (default: 2).")
    inspect.add_argument("--weights", action="store_true", help="Also list every variable by stable name, the names pattern policies match.")
    inspect.add_argument("--json", action="store_true", help="Print the report as JSON.")
    return parser


def _configure_logging(quiet):
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tfpeft").setLevel(logging.WARNING if quiet else logging.INFO)


def _run_train(args):
    import tfpeft
    from tfpeft.config import TrainingConfig

    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(TrainingConfig)
        if getattr(args, field.name) is not None
    }
    if args.evaluation_strategy is not None:
        overrides["evaluation_strategy"] = args.evaluation_strategy
    if args.config:
        config = TrainingConfig.from_toml(args.config, **overrides)
    else:
        config = TrainingConfig.from_dict({}, source="command-line flags", **overrides)
    tfpeft.train(config, verbose=0 if args.quiet else 1)


def _read_texts(args):
    texts = list(args.text)
    if args.input_file:
        try:
            with open(args.input_file, encoding="utf-8") as file:
                texts += [line.rstrip("\n") for line in file if line.strip()]
        except OSError as error:
            raise SystemExit(f"tfpeft predict: cannot read --input-file {args.input_file!r}: {error}")
    if not texts:
        raise SystemExit("tfpeft predict: no texts; pass --text TEXT or --input-file FILE.")
    return texts


def _run_predict(args):
    import tfpeft

    for record in tfpeft.predict(args.run_dir, _read_texts(args), batch_size=args.batch_size):
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


def _run_inspect(args):
    import tfpeft

    report = tfpeft.inspect(args.model, args.policy, pooling=args.pooling, num_labels=args.num_labels)
    if args.json:
        print(json.dumps(report.to_dict(weights=args.weights), indent=2))
        return
    print(f"Policy {args.policy} on {args.model}:\n{report.format()}")
    if args.weights:
        print(f"\n{report.format_weights()}")


COMMANDS = {"train": _run_train, "evaluate": _run_evaluate, "predict": _run_predict, "inspect": _run_inspect}


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
