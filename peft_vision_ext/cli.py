"""Command line: ``peft-vision`` / ``python -m peft_vision_ext`` with subcommands env, presets, train."""

from __future__ import annotations

import argparse
import sys


def _cmd_env(args: argparse.Namespace) -> int:
    from .envinfo import report

    print(report())
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from .models import build_model
    from .presets.report import presets_table

    model = build_model(args.model, num_classes=args.num_classes)
    print(presets_table(model, method=args.method, rank=args.rank))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainSettings, run

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

    train = commands.add_parser("train", help="quick start: MobileNetV2 (ImageNet) -> MNIST with an adapter")
    train.add_argument("--method", default="lora", choices=["lora", "loha", "lokr", "adalora"])
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
