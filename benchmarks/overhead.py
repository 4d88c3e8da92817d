"""Overhead of the plugin: ``import peft_vision_ext`` on top of ``import peft``, and ``get_peft_model`` with a
preset (target_modules=None, resolved by the plugin, checked against the compatibility matrix, one probe forward)
vs plain PEFT with the same targets passed explicitly and the plugin not imported. Every measurement runs in fresh
processes; medians, as ratios.

    python benchmarks/overhead.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

IMPORT = """
import time
t0 = time.perf_counter(); import peft; t1 = time.perf_counter()
{plugin}
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""

GET_PEFT_MODEL = """
import copy, json, statistics, time, warnings
warnings.filterwarnings("ignore")
import peft, timm, torch
{plugin}
MODELS = {{"vit_base_patch16_224": ["qkv"], "mobilenetv2_100": None}}
result = {{}}
for name, explicit in MODELS.items():
    base = timm.create_model(name, pretrained=False, num_classes=10)
    if explicit is None:  # the convs the plugin's 'conv' preset selects, spelled out
        explicit = {targets}
    copies = [copy.deepcopy(base) for _ in range({repeats})]
    times = []
    for model in copies:
        config = peft.LoraConfig(r=8, target_modules={config_targets}, modules_to_save=["head" if "vit" in name
                                 else "classifier"] if {explicit_flag} else None)
        start = time.perf_counter(); peft.get_peft_model(model, config); times.append(time.perf_counter() - start)
    result[name] = statistics.median(times)
print(json.dumps(result))
"""


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 2
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from _common import machine, save

    imports = [tuple(map(float, _run(IMPORT.format(plugin="import peft_vision_ext")).split()))
               for _ in range(args.repeats)]
    peft_s = statistics.median(a for a, _ in imports)
    plugin_s = statistics.median(b for _, b in imports)

    conv_targets = ("[n for n, m in base.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1 "
                    "and n != 'conv_stem']")
    plain = json.loads(_run(GET_PEFT_MODEL.format(plugin="", targets=conv_targets, repeats=args.repeats,
                                                  config_targets="explicit", explicit_flag=True)))
    plugin = json.loads(_run(GET_PEFT_MODEL.format(plugin="import peft_vision_ext", targets=conv_targets,
                                                   repeats=args.repeats, config_targets="None",
                                                   explicit_flag=False)))
    print(f"import peft: {peft_s:.2f} s; import peft_vision_ext afterwards: +{plugin_s:.3f} s "
          f"({(peft_s + plugin_s) / peft_s:.2f}x)")
    print("| model | plain PEFT, explicit targets (s) | plugin, preset + matrix check + probe forward (s) | ratio |")
    print("|---|---:|---:|---:|")
    for name in plain:
        print(f"| {name} | {plain[name]:.3f} | {plugin[name]:.3f} | {plugin[name] / plain[name]:.2f}x |")
    save("overhead", {"machine": machine(), "import_peft_s": peft_s, "import_plugin_extra_s": plugin_s,
                      "get_peft_model_plain_s": plain, "get_peft_model_plugin_s": plugin, "repeats": args.repeats,
                      "settings": {"quick": args.quick}})


if __name__ == "__main__":
    main()
