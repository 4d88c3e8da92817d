"""Run every benchmark and print its table: accuracy (MobileNetV2 -> MNIST-5k; a ViT pretrained here), detection
(ImageNet MobileNetV2 FCOS -> MNIST digit boxes), LoRA variants on a 4-bit ViT (QPiSSA, QOLoRA, DoRA), LoRA on
fused qkv (whole vs q/v slices), AdaLoRA's vision defaults vs PEFT's vs LoRA, SSF and AdaptFormer vs LoRA, AdaLoRA
conv speed, quantized ViT memory, plugin overhead, 4-bit CPU layouts and routing. ``--quick`` is a smoke test of
each (fewer seeds, epochs, steps and a smaller batch; its numbers are not results). JSON and plots go to
benchmarks/results/ (speed and memory JSON next to their scripts).

    python benchmarks/run_all.py [--quick] [--skip memory speed ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {  # name -> (script, full arguments, quick arguments)
    "accuracy-mobilenet": ("accuracy_mobilenet.py", [], ["--quick"]),
    "accuracy-vit": ("accuracy_vit.py", [], ["--quick"]),
    "quantized-lora-variants": ("quantized_lora_variants.py", [], ["--quick"]),
    "detection": ("detection.py", [], ["--quick"]),
    "fused-qkv": ("fused_qkv.py", ["--seeds", "5"], ["--quick"]),
    "adalora-vision": ("adalora_vision.py", [], ["--quick"]),
    "vision-methods": ("vision_methods.py", [], ["--quick"]),
    "speed": ("adalora_conv_speed.py", [], ["--steps", "2", "--size", "128", "--batch", "4"]),
    "memory": ("quantized_vit_memory.py", [], ["--steps", "1", "--batch", "1"]),
    "fsdp-memory": ("fsdp_memory.py", [], ["--image-size", "64", "--batch", "2", "--steps", "1"]),
    "overhead": ("overhead.py", [], ["--quick"]),
    "cpu-paths": ("cpu_paths.py", [], ["--quick"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(BENCHMARKS))
    args = parser.parse_args()
    started = time.perf_counter()
    for name, (script, full, quick) in BENCHMARKS.items():
        if name in args.skip:
            continue
        print(f"\n## {name}: python benchmarks/{script} {' '.join(quick if args.quick else full)}", flush=True)
        begin = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / script), *(quick if args.quick else full)], check=True)
        print(f"({time.perf_counter() - begin:.0f} s)", flush=True)
    print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
