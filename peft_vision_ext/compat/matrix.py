"""The compatibility matrix as data: PEFT method x layer kind -> what training (incl. save/load) and merging do.

Every entry was measured with :mod:`peft_vision_ext.compat.verify` on peft 0.17.1 and 0.21.2 (the two CI lanes);
the test suite re-runs every cell on both. An entry with ``since`` applies from that PEFT release on (the first
release where it was verified), the entry without ``since`` before it. ``peft-vision matrix`` renders this
module into the README's table; a test keeps the two identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from packaging.version import Version

from .kinds import LayerKind

K = LayerKind


class Status(str, Enum):
    SUPPORTED = "supported"
    PLUGIN = "provided by this plugin"
    REFUSED = "refused"
    UNVERIFIED = "unverified"  # a method or layer type this matrix does not cover: passed through to PEFT

    def __str__(self) -> str:
        return self.value

    @property
    def allowed(self) -> bool:
        return self is not Status.REFUSED


SYMBOLS = {Status.SUPPORTED: "✅", Status.PLUGIN: "🔌", Status.REFUSED: "❌", Status.UNVERIFIED: "?"}


class Operation(str, Enum):
    TRAIN = "train"  # inject, forward, backward; save/load always behaves like train (measured on every cell)
    SAVE_LOAD = "save/load"
    MERGE = "merge"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str = ""  # why refused / what the plugin provides / what to watch out for
    instead: str = ""  # what to use instead (refusals)


@dataclass(frozen=True)
class Condition:
    """A check on the targeted module and config that a cell's training verdict depends on."""

    description: str  # rendered into the docs, e.g. "r is a multiple of groups"
    holds: Callable[[Any, int], bool]  # (module, rank) -> ok
    reason: str  # why the cell is refused when the condition fails
    instead: str


@dataclass(frozen=True)
class Entry:
    method: str
    kind: LayerKind
    train: Verdict
    merge: Verdict
    since: str | None = None  # first PEFT release this entry applies to
    condition: Condition | None = None

    def verdict(self, operation: Operation) -> Verdict:
        return self.merge if operation is Operation.MERGE else self.train

    @property
    def condition_verdict(self) -> Verdict:
        """The refusal that applies when the condition does not hold."""
        assert self.condition is not None
        return Verdict(Status.REFUSED, self.condition.reason, self.condition.instead)


METHOD_NAMES = {"lora": "LoRA", "lora-slices": "LoRA (fused slices)", "loha": "LoHa", "lokr": "LoKr",
                "adalora": "AdaLoRA", "ia3": "IA3", "oft": "OFT", "boft": "BOFT", "vera": "VeRA",
                "fourierft": "FourierFT"}
_CONFIG_CLASSES = {"lora": "LoraConfig", "lora-slices": "LoraConfig", "loha": "LoHaConfig", "lokr": "LoKrConfig",
                   "adalora": "AdaLoraConfig", "ia3": "IA3Config", "oft": "OFTConfig", "boft": "BOFTConfig",
                   "vera": "VeraConfig", "fourierft": "FourierFTConfig"}


def peft_method(method: str) -> str:
    """The PEFT method behind a matrix row (``lora-slices`` is a LoRA layout)."""
    return "lora" if method == "lora-slices" else method


def config_class(method: str) -> type:
    """PEFT's config class for a method of the matrix."""
    import peft

    return getattr(peft, _CONFIG_CLASSES[method])


LINEAR_KINDS = (K.LINEAR, K.LINEAR_4D)
CONV_KINDS = (K.CONV2D, K.CONV2D_1X1, K.CONV2D_GROUPED, K.CONV2D_DILATED)
BNB_KINDS = (K.BNB_8BIT, K.BNB_4BIT)

OK = Verdict(Status.SUPPORTED)
_FP32_MERGE = ("merge on a full-precision copy: load the base model without quantization, load the adapter into it, "
               "then merge_and_unload")
_FLAGS = Verdict(Status.PLUGIN, "the plugin marks hand-quantized models (is_loaded_in_4bit/8bit) so that PEFT uses "
                 "its bitsandbytes layers; without the mark LoRA crashes at merge, AdaLoRA at the first training step "
                 "and IA3 drops the adapter at merge")


def _refused(reason: str, instead: str) -> Verdict:
    return Verdict(Status.REFUSED, reason, instead)


_NO_MHA = _refused("PEFT has an nn.MultiheadAttention layer for LoRA only",
                  "LoRA wraps nn.MultiheadAttention; or adapt the MLP (preset 'mlp')")
_LINEAR_ONLY = _refused("PEFT's VeRA and FourierFT adapt Linear layers only",
                        "LoRA, LoHa, LoKr, IA3 or AdaLoRA adapt convolutions")
_FP32_MERGE_REFUSED = _refused("PEFT cannot merge this method into bitsandbytes layers (it crashes, or for IA3 "
                               "raises, at merge)", "merge on a full-precision copy: load the base model without "
                               "quantization, load the adapter into it, then merge_and_unload")


_RANK_DIVIDES_GROUPS = Condition(
    description="r is a multiple of groups",
    holds=lambda module, rank: rank % module.groups == 0,
    reason="PEFT's LoRA conv needs r to be a multiple of groups (a depthwise conv has groups = channels)",
    instead="LoHa or LoKr (peft >= 0.20), IA3, or AdaLoRA (this plugin) adapt depthwise/grouped convs; "
            "or leave them out (preset 'conv')",
)


_LORA_GROUPED_MERGE = _refused("PEFT cannot merge LoRA into grouped convs (NotImplementedError)",
                               "keep the adapter unmerged, or use LoHa/LoKr/IA3, which merge into grouped convs")
_LORA_DILATED = _refused("PEFT's LoRA conv ignores dilation: its output has the wrong size and the first forward "
                         "crashes", "LoHa, LoKr, IA3 or AdaLoRA adapt dilated convs; or leave them out (presets do)")
_SLICES = ("this plugin's LoRA on the q/v (or chosen) slices of a fused qkv / kv Linear or an nn.MultiheadAttention, "
           "each slice with its own rank-r factors; saved as PEFT's standard LoRA of the whole layer, so plain PEFT "
           "loads it")


def _entries() -> list[Entry]:
    entries: list[Entry] = []

    def add(method: str, kinds: tuple[LayerKind, ...], train: Verdict, merge: Verdict | None = None,
            since: str | None = None, condition: Condition | None = None) -> None:
        for kind in kinds:
            entries.append(Entry(method, kind, train, train if merge is None else merge, since, condition))

    # LoRA ------------------------------------------------------------------------------------------
    add("lora", (*LINEAR_KINDS, K.CONV2D, K.CONV2D_1X1, K.MHA), OK)
    add("lora", (K.CONV2D_GROUPED,), OK, _LORA_GROUPED_MERGE, condition=_RANK_DIVIDES_GROUPS)
    add("lora", (K.CONV2D_DILATED,), _LORA_DILATED)
    add("lora", BNB_KINDS, _FLAGS)

    # LoRA on the slices of a fused q/k/v layer (peft_vision_ext.fused): a layout, not a PEFT method. Convolutions are
    # never fused: the same config gives them whole-layer LoRA, whose verdicts they keep.
    add("lora-slices", (*LINEAR_KINDS, K.MHA, *BNB_KINDS), Verdict(Status.PLUGIN, _SLICES))
    add("lora-slices", (K.CONV2D, K.CONV2D_1X1), OK)
    add("lora-slices", (K.CONV2D_GROUPED,), OK, _LORA_GROUPED_MERGE, condition=_RANK_DIVIDES_GROUPS)
    add("lora-slices", (K.CONV2D_DILATED,), _LORA_DILATED)

    # LoHa / LoKr -----------------------------------------------------------------------------------
    for method in ("loha", "lokr"):
        add(method, (*LINEAR_KINDS, K.CONV2D, K.CONV2D_1X1, K.CONV2D_DILATED), OK)
        add(method, (K.CONV2D_GROUPED,), _refused(
            "LoHa/LoKr read grouped conv weights with the wrong shape before peft 0.20 (crash at the first forward)",
            "upgrade to peft >= 0.20, or use IA3 or AdaLoRA (this plugin) on grouped convs"))
        add(method, (K.CONV2D_GROUPED,), OK, since="0.20")
        add(method, (K.MHA,), _NO_MHA)
        add(method, (K.BNB_8BIT,), OK, _FP32_MERGE_REFUSED)
        add(method, (K.BNB_4BIT,), _refused(
            "LoHa/LoKr read the packed 4-bit weight as if it were the full matrix (shape errors at the first forward)",
            "use LoRA on the quantized model, or load the model without quantization to use LoHa/LoKr"))

    # AdaLoRA ---------------------------------------------------------------------------------------
    add("adalora", LINEAR_KINDS, OK)
    add("adalora", CONV_KINDS, Verdict(Status.PLUGIN, "this plugin's AdaLoraConv2d (PEFT < 0.20 has no AdaLoRA "
                                                      "conv; PEFT >= 0.20 ignores groups and crashes on depthwise)"))
    add("adalora", (K.MHA,), _NO_MHA)
    add("adalora", BNB_KINDS, _FLAGS, _FP32_MERGE_REFUSED)

    # IA3 -------------------------------------------------------------------------------------------
    add("ia3", (*LINEAR_KINDS, K.CONV2D, K.CONV2D_1X1, K.CONV2D_DILATED), OK)
    add("ia3", (K.CONV2D_GROUPED,), OK, _refused(
        "IA3's merge of feedforward (input) scaling into grouped convs is wrong before peft 0.21 (crash)",
        "upgrade to peft >= 0.21, or keep the adapter unmerged"))
    add("ia3", (K.CONV2D_GROUPED,), OK, since="0.21")
    add("ia3", (K.MHA,), _NO_MHA)
    add("ia3", BNB_KINDS, _FLAGS, _FP32_MERGE_REFUSED)

    # OFT -------------------------------------------------------------------------------------------
    add("oft", (K.LINEAR, K.CONV2D_1X1), OK)
    add("oft", (K.LINEAR_4D,), _refused(
        "PEFT's OFT reshapes its input as 2-D/3-D: channels-last 4-D input (timm Swin/ConvNeXt MLPs, HF ConvNeXt "
        "pwconv) crashes at the first forward", "BOFT, LoRA, LoHa or LoKr adapt these layers"))
    add("oft", (K.CONV2D, K.CONV2D_GROUPED), _refused(
        "PEFT's OFT on k x k convs is not an identity at initialisation: the output changes before any training "
        "(measured: by 4.5 on a unit-scale conv) and merge disagrees with forward",
        "BOFT for orthogonal fine-tuning of k x k convs (groups == 1), or OFT on 1 x 1 convs only"))
    add("oft", (K.CONV2D_DILATED,), _refused("PEFT's OFT does not support dilated convs", "LoHa, LoKr, IA3 or AdaLoRA"))
    add("oft", (K.MHA,), _NO_MHA)
    add("oft", BNB_KINDS, OK, _refused(
        "OFT's merge into bitsandbytes layers gives a model that differs from the adapted one before peft 0.21",
        f"upgrade to peft >= 0.21, or {_FP32_MERGE}"))
    add("oft", BNB_KINDS, OK, since="0.21")

    # BOFT ------------------------------------------------------------------------------------------
    add("boft", (*LINEAR_KINDS, K.CONV2D, K.CONV2D_1X1), OK)
    add("boft", (K.CONV2D_GROUPED,), _refused("PEFT's BOFT does not support grouped convs",
                                              "LoHa, LoKr, IA3 or AdaLoRA adapt grouped/depthwise convs"))
    add("boft", (K.CONV2D_DILATED,), _refused("PEFT's BOFT ignores dilation (crash at the first forward)",
                                              "LoHa, LoKr, IA3 or AdaLoRA adapt dilated convs"))
    add("boft", (K.MHA,), _NO_MHA)
    add("boft", BNB_KINDS, _refused("BOFT crashes on bitsandbytes layers before peft 0.21",
                                    "upgrade to peft >= 0.21, or use LoRA on the quantized model"))
    add("boft", BNB_KINDS, OK, since="0.21")

    # VeRA ------------------------------------------------------------------------------------------
    add("vera", (*LINEAR_KINDS, K.BNB_8BIT), OK)
    add("vera", (*CONV_KINDS,), _LINEAR_ONLY)
    add("vera", (K.MHA,), _NO_MHA)
    add("vera", (K.BNB_4BIT,), OK, _refused("VeRA's merge into 4-bit layers crashes before peft 0.21",
                                            f"upgrade to peft >= 0.21, or {_FP32_MERGE}"))
    add("vera", (K.BNB_4BIT,), OK, since="0.21")

    # FourierFT -------------------------------------------------------------------------------------
    add("fourierft", LINEAR_KINDS, OK)
    add("fourierft", (*CONV_KINDS,), _LINEAR_ONLY)
    add("fourierft", (K.MHA,), _NO_MHA)
    add("fourierft", BNB_KINDS, OK, _FP32_MERGE_REFUSED)
    return entries


MATRIX: tuple[Entry, ...] = tuple(_entries())
METHODS: tuple[str, ...] = tuple(METHOD_NAMES)
KINDS: tuple[LayerKind, ...] = tuple(k for k in LayerKind if k is not K.OTHER)


@dataclass(frozen=True)
class Advice:
    """Field experience: a warning (never a refusal) for a method on a kind of network or on quantized layers."""

    methods: frozenset[str]
    when: str  # "transformer" (family kind), "quantized" (bitsandbytes targets) or "always"
    text: str


ADVICE: tuple[Advice, ...] = (
    Advice(frozenset({"loha", "lokr"}), "transformer",
           "LoHa/LoKr on pure-transformer ViTs often end below LoRA at the same parameter budget; prefer LoRA or "
           "AdaLoRA there unless you need the compression."),
    Advice(frozenset({"adalora"}), "always",
           "AdaLoRA keeps SVD triplets and importance statistics per layer: expect more memory than LoRA at the same "
           "init_r, and pass peft_vision_ext.AdaLoraCallback() to Trainer so ranks are allocated."),
    Advice(frozenset(METHOD_NAMES), "quantized",
           "Quantized fine-tuning of vision models is less mature than of language models: compare accuracy with a "
           "full-precision LoRA run before relying on it."),
)


def entry(method: str, kind: LayerKind, peft_version: Version) -> Entry | None:
    """The entry in force for ``method`` on ``kind`` under ``peft_version`` (None: not covered)."""
    candidates = [e for e in MATRIX if e.method == method and e.kind is kind
                  and (e.since is None or peft_version >= Version(e.since))]
    if not candidates:
        return None
    return max(candidates, key=lambda e: Version(e.since or "0"))


def kinds_supporting(method: str, operation: Operation, peft_version: Version) -> frozenset[LayerKind] | None:
    """Kinds where ``operation`` of ``method`` is allowed unconditionally (None: method not covered)."""
    if method not in METHOD_NAMES:
        return None
    found = (entry(method, kind, peft_version) for kind in KINDS)
    return frozenset(e.kind for e in found if e and e.verdict(operation).status.allowed and e.condition is None)


# --------------------------------------------------------------------------------------------------
# Rendering (README "Compatibility matrix"; `peft-vision matrix`)
# --------------------------------------------------------------------------------------------------
def _cell_text(method: str, kind: LayerKind, notes: dict[tuple[str, str], int]) -> str:
    versions = sorted((e for e in MATRIX if e.method == method and e.kind is kind),
                      key=lambda e: Version(e.since or "0"))
    parts = []
    for index, item in enumerate(versions):
        train, merge = item.train, item.merge
        text = SYMBOLS[train.status] + (f" if {item.condition.description}" if item.condition else "")
        if train != merge:
            text += f" / {SYMBOLS[merge.status]}"
        numbers: list[int] = []
        for verdict in (item.condition, train, merge):
            if verdict is None or not verdict.reason:
                continue
            number = notes.setdefault((verdict.reason, verdict.instead), len(notes) + 1)
            if number not in numbers:
                numbers.append(number)
        text += "".join(f" [{n}]" for n in numbers)
        if len(versions) > 1:
            upper = versions[index + 1].since if index + 1 < len(versions) else None
            scope = f"peft ≥ {item.since}" if item.since else ""
            scope = f"{scope}{', ' if scope and upper else ''}{'peft < ' + upper if upper else ''}"
            text = f"{scope}: {text}"
        parts.append(text)
    return "<br>".join(reversed(parts))


def matrix_markdown() -> str:
    """The matrix as markdown: legend, one row per method, one column per layer kind, numbered notes."""
    notes: dict[tuple[str, str], int] = {}
    lines = [
        "Legend: ✅ supported · 🔌 provided by this plugin · ❌ refused before the model is touched · "
        "`a / b`: train and save/load / merge (one symbol: all three).",
        "",
        "| method | " + " | ".join(f"`{k.value}`" for k in KINDS) + " |",
        "|---" * (len(KINDS) + 1) + "|",
    ]
    for method in METHODS:
        cells = [_cell_text(method, kind, notes) for kind in KINDS]
        lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) + " |")
    lines += ["", "Layer kinds: " + "; ".join(f"`{k.value}` {k.description}" for k in KINDS) + ".", ""]
    lines += [f"{number}. {reason}.{' Instead: ' + instead + '.' if instead else ''}"
              for (reason, instead), number in notes.items()]
    lines += ["", "Warnings from field experience (never refusals):", ""]
    lines += [f"- {', '.join(METHOD_NAMES[m] for m in METHODS if m in a.methods)} ({a.when}): {a.text}"
              for a in ADVICE]
    lines += ["", "Other PEFT methods and layer types pass through to PEFT with a one-time warning that they are "
              "unverified on vision layers."]
    return "\n".join(lines)
