"""Command line: `lmdistill run | eval | cache | export | compress-vocab | demo`. Thin: parse, call lmdistill.api, print.

A user error (ConfigError, DataError, TrainingError) prints one line to stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from lmdistill.errors import LmdistillError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="lmdistill: %(message)s", stream=sys.stderr)
    import transformers

    transformers.logging.set_verbosity_info() if verbose else transformers.logging.set_verbosity_error()
    if not verbose:
        # Weight-loading bars are noise; the Trainer's own progress bars (tqdm.auto) stay on.
        transformers.utils.logging.disable_progress_bar()
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def _print_result(result) -> None:
    from lmdistill.report import markdown_table

    print(markdown_table(result.report))
    print(f"\nstudent: {result.student_dir}")
    for kind, path in result.report_paths.items():
        print(f"report ({kind}): {path}")


def cmd_run(args) -> None:
    from lmdistill.config import load_config

    config = load_config(args.config, args.set)  # a config error stops here, before the heavy imports
    from lmdistill.api import distill

    result = distill(config, resume=args.resume, overwrite=args.overwrite)
    if result.report:
        _print_result(result)


def cmd_eval(args) -> None:
    from lmdistill.api import evaluate_model
    from lmdistill.config import load_config

    config = load_config(args.config, args.set)
    entry = evaluate_model(args.model, config, compare_onnx=args.compare_onnx, length_config=_length_option(args))
    if args.compare_onnx:
        from lmdistill.report import entries_table

        # The table is for a person (stderr); stdout stays one JSON document for scripts.
        print(entries_table({"pytorch": entry["pytorch"], "onnx": entry["onnx"]}), file=sys.stderr)
    print(json.dumps(entry, indent=2))


def cmd_export(args) -> None:
    from lmdistill.export import export_onnx

    info = export_onnx(args.model, args.out, quantize=args.quantize, overwrite=args.overwrite, fmt=args.format)
    diff = max(info["check"]["max_abs_diff"].values())
    print(f"exported {args.model} -> {args.out}/model.onnx ({info['exporter']}, opset {info['opset']}"
          f"{', ' + args.quantize if args.quantize else ''}); max |onnx - pytorch| on "
          f"{info['check']['rows']} real rows: {diff:.2e}")


def _length_option(args):
    """--keep-ratio R or --length-config L1,L2,... (token counts, or fractions of the input length)."""
    import yaml

    from lmdistill.errors import ConfigError
    from lmdistill.models.pruning import check_keep_ratio

    if args.keep_ratio is not None and args.length_config is not None:
        raise ConfigError("--keep-ratio and --length-config: give one of them")
    if args.keep_ratio is not None:
        return check_keep_ratio(args.keep_ratio, "--keep-ratio")
    if args.length_config is not None:
        try:
            values = yaml.safe_load(f"[{args.length_config.strip('[]')}]")
        except yaml.YAMLError:
            values = None
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--length-config: '{args.length_config}' is not a comma-separated list of lengths")
        return values
    return None


def cmd_cache(args) -> None:
    from lmdistill.api import fill_cache

    for entry in fill_cache(args.config, overrides=args.set):
        if entry["status"] == "live":
            print(f"stage {entry['stage']}: not cacheable (the teacher runs live)")
        else:
            print(f"stage {entry['stage']}: {entry['status']} {entry['folder']} ({', '.join(entry['fields'])}; "
                  f"{entry['size_mb']} MB)")


def cmd_demo(args) -> None:
    from lmdistill.api import distill

    config = REPO_ROOT / "configs" / "demo.yaml"
    if not config.is_file():
        raise LmdistillError(f"demo: {config} not found; run the demo from a clone of the lmdistill repository")
    overrides = [f"output={args.output}"] + (args.set or [])
    result = distill(config, overwrite=True, overrides=overrides)
    _print_result(result)


def cmd_compress_vocab(args) -> None:
    from lmdistill.compress import compress_vocabulary, summary_lines

    result = compress_vocabulary(args.model, args.keep, args.corpus, args.out, args.substitute, args.multiple,
                                 args.keep_token)
    print("\n".join(summary_lines(result)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmdistill", description="Knowledge distillation for HF language models")
    parser.add_argument("-v", "--verbose", action="store_true", help="show transformers' own logs")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one experiment from a YAML config")
    run.add_argument("config")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    run.add_argument("--overwrite", action="store_true", help="delete an existing output folder first")
    run.set_defaults(func=cmd_run)

    evaluate = sub.add_parser("eval", help="score and measure a saved model on a config's task")
    evaluate.add_argument("model")
    evaluate.add_argument("--config", required=True)
    evaluate.add_argument("--set", action="append", metavar="KEY=VALUE")
    evaluate.add_argument("--compare-onnx", metavar="EXPORT_DIR",
                          help="also score and measure this ONNX export of MODEL, side by side")
    evaluate.add_argument("--keep-ratio", type=float, metavar="R",
                          help="run the model with token pruning at this keep ratio per layer, in (0, 1]")
    evaluate.add_argument("--length-config", metavar="L1,L2,...",
                          help="tokens kept after each layer (integers) or fractions of the input length")
    evaluate.set_defaults(func=cmd_eval)

    export = sub.add_parser("export", help="export a saved model folder to ONNX (runs with onnxruntime alone)")
    export.add_argument("model", metavar="MODEL")
    export.add_argument("--out", required=True, help="the export folder to write")
    # Checked by lmdistill.export (one clear line), not by argparse choices (usage text + error).
    export.add_argument("--format", default="onnx", help="onnx (the only format so far)")
    export.add_argument("--quantize", default=None, help="int8: onnxruntime dynamic quantization")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    export.set_defaults(func=cmd_export)
    compress = sub.add_parser("compress-vocab", help="keep the most frequent tokens of an LM's vocabulary (GLMD)")
    compress.add_argument("model", help="a HF causal or masked LM folder (or smollm2)")
    compress.add_argument("--keep", type=float, required=True, help="fraction in (0, 1] or token count")
    compress.add_argument("--corpus", nargs="+", required=True, help="text files or globs to rank tokens on")
    compress.add_argument("--out", required=True)
    compress.add_argument("--substitute", choices=["dot", "cosine", "unk"], default="dot",
                          help="what a dropped token maps to (saved in vocab_map.json)")
    compress.add_argument("--multiple", type=int, default=64, help="round the kept count up to a multiple of this")
    compress.add_argument("--keep-token", action="append", metavar="TOKEN", help="a token that must stay (repeatable)")
    compress.set_defaults(func=cmd_compress_vocab)

    cache = sub.add_parser("cache", help="fill the teacher-output cache of a config without training")
    cache.add_argument("config")
    cache.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    cache.set_defaults(func=cmd_cache)

    demo = sub.add_parser("demo", help="MiniLM-L6 teacher -> 3-layer student on SST-2 with kd")
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--set", action="append", metavar="KEY=VALUE")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _setup_logging(args.verbose)
    try:
        args.func(args)
    except LmdistillError as err:
        print(f"lmdistill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmdistill: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
