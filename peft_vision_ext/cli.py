"""Command line: ``peft-vision`` / ``python -m peft_vision_ext`` with subcommands env, presets, check, matrix,
recommend and train."""

from __future__ import annotations

import argparse
import sys

from .compat import check, grid, recommend
from .compat.verify import NEEDS_GPU, run_cell
from .envinfo import report
from .errors import PresetError, UnsupportedCombinationError
from .matrix import rows, verdicts
from .matrix.rows import installed
from .matrix.verdicts import KINDS, config_class, docs_markdown, entry, matrix_markdown
from .models import build_model
from .presets import preset_config
from .presets.report import presets_table
from .train import TrainSettings, rank_kwargs, run
from .versions import peft_version


def _cmd_env(args: argparse.Namespace) -> int:
    print(report())
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    model = build_model(args.model, num_classes=args.num_classes)
    print(presets_table(model, method=args.method, rank=args.rank))
    return 0


def _config_from_args(model: object, args: argparse.Namespace) -> object:
    kwargs: dict = {}
    if args.rank is not None:
        # AdaLoRA: the LoRA rank whose final budget it matches (target_r = r); AdaptFormer: its bottleneck
        kwargs.update(rank_kwargs(args.method, args.rank))
    if args.method == "adalora":
        kwargs["total_step"] = 1000
    if args.target_modules:
        kwargs["target_modules"] = args.target_modules.split(",")
        if args.method == "adalora":  # explicit targets, AdaLoRA's vision defaults still filled in
            return preset_config(model, "adalora", **kwargs)
        return _explicit_config(args.method, kwargs)
    return preset_config(model, args.method, args.preset, **kwargs)


def _explicit_config(method: str, kwargs: dict) -> object:
    return config_class(method)(**kwargs)


def _cmd_check(args: argparse.Namespace) -> int:
    model = build_model(args.model, num_classes=args.num_classes)
    try:
        report = check(model, _config_from_args(model, args))
    except (PresetError, UnsupportedCombinationError) as error:  # a preset the method cannot use at all
        print(f"REFUSED: {error}", file=sys.stderr)
        return 1
    print(report.render())
    return 0 if report.ok else 1


def _cmd_matrix(args: argparse.Namespace) -> int:
    if args.docs:
        print(docs_markdown())
        return 0
    if not args.verify:
        print(matrix_markdown())
        return 0

    failures = 0
    names = list(verdicts.METHODS) + [row.name for row in rows.GENERATED if installed(row)]
    with grid.quiet():
        for method in names:
            for kind in KINDS:
                item = entry(method, kind, peft_version())
                if item is None:
                    continue  # measured below, refusals off
                run = run_cell(method, kind)
                outcome = "ok" if run.ok else f"stopped at {run.failed_stage}: {run.error.splitlines()[0][:100]}"
                refused = "UnsupportedCombinationError" in run.error
                # a failure is a cell the matrix lets through that then fails (CorDA's own preprocessing may raise
                # before the refusal on cells the matrix refuses anyway)
                failures += not (run.ok or refused or run.failed_stage == NEEDS_GPU or not item.train.status.allowed)
                print(f"{method:<16} {kind.value:<17} {item.train.status.value:<24} {outcome}", flush=True)
    print(f"{failures} cells failed outside a refusal")
    missing = grid.unverified_rows()
    if missing:
        path, results = grid.verify_locally(missing)
        for row, outcomes in results.items():
            working = [kind for kind, result in outcomes.items() if result == grid.OK]
            print(f"{row:<16} not in the shipped data: works on {', '.join(working) or 'no layer kind'}")
        print(f"measured {len(results)} methods the shipped data lacks on peft {peft_version()}: {path}\n"
              f"they stay unverified (passed to PEFT with a warning); set {grid.LOCAL_OPT_IN}=1 to let these results "
              "refuse what failed here")
    return 1 if failures else 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    model = build_model(args.model, num_classes=args.num_classes)
    print(recommend(model, quantization=args.quantization, memory=args.memory).render())
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    settings = TrainSettings(
        method=args.method, preset=args.preset, rank=args.rank, epochs=args.epochs, train_size=args.train_size,
        test_size=args.test_size, image_size=args.image_size, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, output_dir=args.output_dir, progress=not args.no_progress,
    )
    run(settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peft-vision", description="Vision add-ons for Hugging Face PEFT.")
    commands = parser.add_subparsers(dest="command", required=True)

    env = commands.add_parser("env", help="versions, active add-ons, bitsandbytes quantization check")
    env.set_defaults(func=_cmd_env)

    presets = commands.add_parser("presets", help="presets of a model: module count, trainable params, share")
    presets.add_argument("model", help="timm:NAME, torchvision:NAME or hf:PATH_OR_MODEL_TYPE (random init)")
    presets.add_argument("--method", default="lora", help="PEFT method the counts are for (default: lora)")
    presets.add_argument("--rank", type=int, default=8, help="adapter rank for the parameter counts")
    presets.add_argument("--num-classes", type=int, default=None, help="size of the classification head")
    presets.set_defaults(func=_cmd_presets)

    methods = ["lora", "loha", "lokr", "adalora", "ia3", "oft", "boft", "vera", "fourierft", "ssf", "adaptformer"]
    check = commands.add_parser("check", help="dry run: per targeted module its layer kind, whether the method can "
                                "train/merge it, adapter vs base parameters (exit 1 when refused)")
    check.add_argument("model", help="timm:NAME, torchvision:NAME or hf:PATH_OR_MODEL_TYPE (random init)")
    check.add_argument("--method", default="lora", choices=methods)
    check.add_argument("--preset", default=None, help="preset name (default: the family's default)")
    check.add_argument("--target-modules", default=None, help="comma-separated names, instead of a preset")
    check.add_argument("--rank", type=int, default=None, help="r (AdaLoRA: target_r = r, init_r = 1.5 r)")
    check.add_argument("--num-classes", type=int, default=None, help="size of the classification head")
    check.set_defaults(func=_cmd_check)

    matrix = commands.add_parser("matrix", help="the compatibility matrix as markdown (as on the docs' matrix page)")
    matrix.add_argument("--docs", action="store_true",
                        help="every measured cell with PEFT's outcome per lane (docs/reference/compatibility.md)")
    matrix.add_argument("--verify", action="store_true",
                        help="run every cell on tiny layers with the installed PEFT instead of printing")
    matrix.set_defaults(func=_cmd_matrix)

    recommend = commands.add_parser("recommend", help="method, preset, config and learning rate for a model")
    recommend.add_argument("model", help="timm:NAME, torchvision:NAME or hf:PATH_OR_MODEL_TYPE (random init)")
    recommend.add_argument("--quantization", choices=["4bit", "8bit"], default=None)
    recommend.add_argument("--memory", choices=["low", "normal", "high"], default=None)
    recommend.add_argument("--num-classes", type=int, default=None)
    recommend.set_defaults(func=_cmd_recommend)

    train = commands.add_parser("train", help="quick start: MobileNetV2 (ImageNet) -> MNIST with an adapter")
    train.add_argument("--method", default="lora", choices=["lora", "loha", "lokr", "adalora", "ssf", "adaptformer"])
    train.add_argument("--preset", default=None, help="preset name (default: the family's default)")
    train.add_argument("--rank", type=int, default=8)
    train.add_argument("--epochs", type=int, default=2)
    train.add_argument("--train-size", type=int, default=4000)
    train.add_argument("--test-size", type=int, default=1000)
    train.add_argument("--image-size", type=int, default=64)
    train.add_argument("--batch-size", type=int, default=50)
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--output-dir", default="runs/quickstart")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
