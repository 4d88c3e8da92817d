"""The compatibility matrix as data: PEFT method x layer kind -> what training (incl. save/load) and merging do.

Every entry was measured with :mod:`peft_vision_ext.compat.verify` on peft 0.17.1, 0.21.2 and 0.22.0 (0.17.1 and
0.22.0 are the CI lanes; the test suite re-runs every cell on both). An entry with ``since`` applies from that PEFT
release on (the first release where it was verified), the entry without ``since`` before it. ``peft-vision matrix``
renders this module as markdown; docs/generate.py writes it into docs/reference/matrix.md and a test keeps the two
identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from packaging.version import Version

from ..evidence import measured, quote
from ..layers.kinds import LayerKind
from ..patching import skipped_hook_for
from . import grid
from .rows import CURATED_BY_NAME, CURATED_ROWS, LORA_VARIANTS, OTHER_METHODS, PLUGIN_METHODS, ROWS, config_of

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
    measured: str = ""  # generated entries: the grid's outcome the verdicts were read from (grid.py)

    def verdict(self, operation: Operation) -> Verdict:
        return self.merge if operation is Operation.MERGE else self.train

    @property
    def condition_verdict(self) -> Verdict:
        """The refusal that applies when the condition does not hold."""
        assert self.condition is not None
        return Verdict(Status.REFUSED, self.condition.reason, self.condition.instead)


#: The hand-written rows' titles (the one method table is :mod:`.rows`).
METHOD_NAMES: dict[str, str] = {row.name: row.title for row in CURATED_ROWS}


def peft_method(method: str) -> str:
    """The PEFT method behind a matrix row (``lora-slices`` is a LoRA layout)."""
    return "lora" if method == "lora-slices" else method


def config_class(method: str) -> type:
    """PEFT's config class for a method of the matrix (the plugin's own methods: as registered with PEFT)."""
    return config_of(CURATED_BY_NAME.get(method) or ROWS[method])


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
_LORA_DILATED = _refused("PEFT's LoRA conv ignores dilation before peft 0.22: its output has the wrong size and the "
                         "first forward crashes", "upgrade to peft >= 0.22 (its lora_A takes the conv's dilation), or "
                         "LoHa, LoKr, IA3 or AdaLoRA adapt dilated convs; or leave them out (presets do before 0.22)")
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
    add("lora", (K.CONV2D_DILATED,), OK, since="0.22")
    add("lora", BNB_KINDS, _FLAGS)

    # LoRA on the slices of a fused q/k/v layer (peft_vision_ext.fused): a layout, not a PEFT method. Convolutions are
    # never fused: the same config gives them whole-layer LoRA, whose verdicts they keep.
    add("lora-slices", (*LINEAR_KINDS, K.MHA, *BNB_KINDS), Verdict(Status.PLUGIN, _SLICES))
    add("lora-slices", (K.CONV2D, K.CONV2D_1X1), OK)
    add("lora-slices", (K.CONV2D_GROUPED,), OK, _LORA_GROUPED_MERGE, condition=_RANK_DIVIDES_GROUPS)
    add("lora-slices", (K.CONV2D_DILATED,), _LORA_DILATED)
    add("lora-slices", (K.CONV2D_DILATED,), OK, since="0.22")

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
        "PEFT's OFT reshapes its input as 2-D/3-D before peft 0.22: channels-last 4-D input (timm Swin/ConvNeXt MLPs, "
        "HF ConvNeXt pwconv) crashes at the first forward",
        "upgrade to peft >= 0.22, or BOFT, LoRA, LoHa or LoKr adapt these layers"))
    add("oft", (K.LINEAR_4D,), OK, since="0.22")
    add("oft", (K.CONV2D, K.CONV2D_GROUPED), _refused(
        "PEFT's OFT on k x k convs is not an identity at initialisation before peft 0.22: the output changes before "
        "any training (measured: by 4.5 on a unit-scale conv) and merge disagrees with forward",
        "upgrade to peft >= 0.22 (k x k convs with groups == 1), or BOFT for orthogonal fine-tuning of k x k convs "
        "(groups == 1), or OFT on 1 x 1 convs only"))
    add("oft", (K.CONV2D,), OK, since="0.22")
    add("oft", (K.CONV2D_GROUPED,), _refused(
        "PEFT's OFT does not support grouped convs from peft 0.22 on (it raises at injection)",
        "LoHa, LoKr, IA3 or AdaLoRA adapt grouped/depthwise convs"), since="0.22")
    add("oft", (K.CONV2D_DILATED,), _refused("PEFT's OFT does not support dilated convs before peft 0.22",
                                             "upgrade to peft >= 0.22, or LoHa, LoKr, IA3 or AdaLoRA"))
    add("oft", (K.CONV2D_DILATED,), OK, since="0.22")
    add("oft", (K.MHA,), _NO_MHA)
    add("oft", BNB_KINDS, OK, _refused(
        "OFT's merge into bitsandbytes layers gives a model that differs from the adapted one before peft 0.21",
        f"upgrade to peft >= 0.21, or {_FP32_MERGE}"))
    add("oft", BNB_KINDS, OK, since="0.21")

    # BOFT ------------------------------------------------------------------------------------------
    add("boft", (*LINEAR_KINDS, K.CONV2D, K.CONV2D_1X1), OK)
    add("boft", (K.CONV2D_GROUPED,), _refused("PEFT's BOFT does not support grouped convs",
                                              "LoHa, LoKr, IA3 or AdaLoRA adapt grouped/depthwise convs"))
    add("boft", (K.CONV2D_DILATED,), _refused("PEFT's BOFT ignores dilation before peft 0.22 (crash at the first "
                                              "forward)", "upgrade to peft >= 0.22, or LoHa, LoKr, IA3 or AdaLoRA "
                                              "adapt dilated convs"))
    add("boft", (K.CONV2D_DILATED,), OK, since="0.22")
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


#: The hand-written entries: the ten original rows on the nine original kinds, with reasons written for people.
CURATED_MATRIX: tuple[Entry, ...] = tuple(_entries())
#: The rows with hand-written entries (their other kinds, and every other row, come from the measured grid).
METHODS: tuple[str, ...] = tuple(METHOD_NAMES)
KINDS: tuple[LayerKind, ...] = tuple(k for k in LayerKind if k is not K.OTHER)


def curated(method: str, kind: LayerKind) -> bool:
    """Whether a hand-written entry covers this cell (else the measured grid does)."""
    return any(e.method == method and e.kind is kind for e in CURATED_MATRIX)


def title(row: str) -> str:
    """A row's name as the docs and messages print it (``hra`` -> ``HRA``)."""
    return ROWS[row].title if row in ROWS else METHOD_NAMES.get(row, row)


def _is_lora_variant(row: str) -> bool:
    return any(row == variant.name for variant in LORA_VARIANTS)


#: LoRA-init rows whose residual quantization.residual quantizes (QPiSSA): the base-rewriting inits that run
#: without a GPU. Their refusals on bnb layers offer it.
_RESIDUAL_ROWS = tuple(v.name for v in LORA_VARIANTS if v.rewrites_base and not v.needs_gpu)
#: What refusals of measured cells offer instead (the fused-slices layout is LoRA's, not an alternative to it).
_ALTERNATIVES = tuple(m for m in METHODS if m != "lora-slices")


def _trains(method: str, kind: LayerKind, since: str | None, results: dict[str, dict[str, str]]) -> bool:
    """Whether ``method`` trains ``kind`` unconditionally at the lane ``since`` (hand-written entry or measured)."""
    if curated(method, kind):
        found = _entry_in(CURATED_MATRIX, method, kind, Version(since or "0"))
        return found is not None and found.train.status.allowed and found.condition is None
    result = results.get(method, {}).get(kind.value, "")
    return result == grid.OK or grid.stage(result) == "merge"


def _alternatives(row: str, kind: LayerKind, since: str | None, results: dict[str, dict[str, str]]) -> str:
    """What to use instead on ``kind``: the hand-written rows that train it at that release."""
    names = [METHOD_NAMES[m] for m in _ALTERNATIVES if m != row and _trains(m, kind, since, results)]
    if _is_lora_variant(row) and "LoRA" in names:
        plain = {"lora-dora": "LoRA without DoRA", "lora-rslora": "LoRA without rsLoRA"}.get(
            row, "LoRA with its default initialisation")
        if row in _RESIDUAL_ROWS and kind.bits is not None:
            plain = (f"peft_vision_ext.get_quantized_peft_model(<the full-precision model>, config, bits="
                     f"{kind.bits}) (this init on full precision, then its residual "
                     f"quantized: Q{title(row).rpartition(' ')[2]}); or {plain}")
        return plain + "".join(f", {name}" for name in names if name != "LoRA")
    if names:
        return f"{', '.join(names)} {'adapt' if len(names) > 1 else 'adapts'} {kind.value} layers"
    return "leave these layers out (target other modules), or train them in full (modules_to_save)"


def _measured_verdicts(row: str, kind: LayerKind, result: str, since: str | None,
                       results: dict[str, dict[str, str]]) -> tuple[Verdict, Verdict]:
    """Verdicts from a measured outcome: ``ok`` is supported; a merge failure refuses merging; needs-gpu stays
    unverified (passed through with a warning); any other failure refuses the cell."""
    if result == grid.OK:
        return OK, OK
    where = grid.stage(result)
    message = result.split(":", 1)[1].strip() if ":" in result else ""
    label = f"{title(row)}: " if _is_lora_variant(row) else ""
    if where == "needs-gpu":
        unverified = Verdict(Status.UNVERIFIED, f"{label}{grid.STAGES[where]}")
        return unverified, unverified
    merge_instead = ROWS[row].merge_instead if row in ROWS else ""
    instead = merge_instead if where == "merge" and merge_instead else _alternatives(row, kind, since, results)
    refused = _refused(f"{label}{grid.STAGES[where]} (measured: {message})", instead)
    return (OK, refused) if where == "merge" else (refused, refused)


def _generated_entries() -> list[Entry]:
    """Entries for every measured cell no hand-written entry covers, one per measured PEFT lane (the oldest lane
    also speaks for older releases; each newer one from its own release on)."""
    lanes = sorted(grid.load(), key=Version)
    entries = []
    for index, lane in enumerate(lanes):
        since = None if index == 0 else lane
        results = grid.load()[lane]
        for row, outcomes in results.items():
            for kind_value, result in outcomes.items():
                kind = LayerKind(kind_value)
                if not curated(row, kind):
                    entries.append(Entry(row, kind, *_measured_verdicts(row, kind, result, since, results), since,
                                         measured=result))
    return entries


def _entry_in(entries: tuple[Entry, ...], method: str, kind: LayerKind, peft_version: Version) -> Entry | None:
    candidates = [e for e in entries if e.method == method and e.kind is kind
                  and (e.since is None or peft_version >= Version(e.since))]
    return max(candidates, key=lambda e: Version(e.since or "0")) if candidates else None


def all_entries() -> tuple[Entry, ...]:
    """Every entry: the hand-written ones, then one per measured cell and lane. Built from ``grid.json`` on first use
    (never at import); ``MATRIX`` names the same tuple, and setting it (tests) replaces it."""
    found = globals().get("MATRIX")
    if found is None:
        found = globals()["MATRIX"] = CURATED_MATRIX + tuple(_generated_entries())
    return found


def __getattr__(name: str) -> object:
    if name == "MATRIX":  # data, built on first use: the measured grid is not read at import
        return all_entries()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Advice:
    """Field experience: a warning (never a refusal) for a method on a kind of network or on quantized layers."""
    methods: frozenset[str]
    when: str  # "transformer" (family kind), "quantized" (bitsandbytes targets) or "always"
    text: str


def _adalora_advice() -> str:
    low, high = measured("adalora.peak_low"), measured("adalora.peak_high")
    trainable = measured("adalora.vit_trainable")
    statistics_mib = 3 * 4 * trainable.value / 2**20  # three fp32 importance statistics per adapter parameter
    return (f"AdaLoRA keeps three importance statistics per adapter parameter and starts at 1.5x LoRA's rank (ViT "
            f"task: {trainable.value:,.0f} adapter parameters, {statistics_mib:.1f} MiB of statistics); its process "
            f"peak measured {low}-{high}x LoRA's at the same final budget ({low.path}). Pass "
            "peft_vision_ext.AdaLoraCallback() to Trainer so ranks are allocated.")


ADVICE: tuple[Advice, ...] = (
    Advice(frozenset({"loha", "lokr"}), "transformer", quote(
        "LoHa/LoKr on pure-transformer ViTs ended below LoRA on our ViT task (LoHa r=8 {vit.loha} %, LoKr r=8 "
        "{vit.lokr} %, LoRA r=8 {vit.lora} %; benchmarks/results/accuracy_vit.json): prefer LoRA or AdaLoRA there "
        "unless you need LoKr's compression.")),
    Advice(frozenset({"adalora"}), "always", _adalora_advice()),
    Advice(frozenset(METHOD_NAMES), "quantized", quote(
        "Quantized fine-tuning: on our ViT task LoRA on 4-bit weights ended {quantized.lora_4bit:+.2f} +- "
        "{quantized.lora_4bit_std} points from fp32 LoRA (5 paired seeds; QPiSSA {quantized.qpissa:+.2f}; "
        "benchmarks/results/quantized_lora_variants.json): compare with a full-precision LoRA run on your task before "
        "relying on it.")),
)


#: Config fields by which a user asks PEFT for a non-identity (random) start instead of its default initialisation.
INIT_FIELDS = ("init_weights", "init_lora_weights", "init_ia3_weights")
_ASKED_FOR_CHANGE = Verdict(Status.UNVERIFIED, "measured as changing the output at initialisation under PEFT's "
                            "default initialisation; this config asks for a non-identity start (init_weights=False), "
                            "so that refusal does not apply, and the stages after it were not measured")


def asks_for_non_identity_init(config: Any) -> bool:
    """Whether ``config`` turns PEFT's identity initialisation off (``init_weights=False`` and the like)."""
    return any(getattr(config, name, True) is False for name in INIT_FIELDS)


def for_config(item: Entry, config: Any) -> tuple[Verdict, Verdict]:
    """(train, merge) of a measured entry for ``config``: a cell refused only because PEFT's default initialisation
    changes the output is not refused for a config that asks for a non-identity start (it is unverified)."""
    if item.measured and grid.stage(item.measured) == "identity" and asks_for_non_identity_init(config):
        return _ASKED_FOR_CHANGE, _ASKED_FOR_CHANGE
    return item.train, item.merge


def entry(method: str, kind: LayerKind, peft_version: Version) -> Entry | None:
    """The entry in force for ``method`` (a row) on ``kind`` under ``peft_version`` (None: not covered). A cell that
    works only through a plugin hook the installed PEFT made the plugin skip is refused (see
    :func:`peft_vision_ext.peft_hooks.install`)."""
    found = _entry_in(all_entries(), method, kind, peft_version)
    skipped = skipped_hook_for(method, kind.value)
    if skipped is None:
        return found
    name, record = skipped
    refusal = _refused(f"the plugin's hook {name!r}, which this needs, was skipped ({record.reason})",
                       "a peft-vision-ext release that supports this PEFT release, or a PEFT release this one "
                       "supports (pyproject.toml's range)")
    return dataclasses.replace(found or Entry(method, kind, OK, OK), train=refusal, merge=refusal, condition=None,
                               measured="")


def config_rows(method: str, config: Any) -> list[str]:
    """The rows a config is judged by: its method, plus for LoRA each variant it turns on (DoRA, rsLoRA, a named
    ``init_lora_weights``). A variant the data does not know is unverified, like an unknown method."""
    rows = [method]
    if method == "lora":
        if getattr(config, "use_dora", False):
            rows.append("lora-dora")
        if getattr(config, "use_rslora", False):
            rows.append("lora-rslora")
        init = getattr(config, "init_lora_weights", True)
        if isinstance(init, str):
            rows.append("lora-" + ("pissa" if init.startswith("pissa") else init))
    return rows


def kinds_supporting(method: str, operation: Operation, peft_version: Version) -> frozenset[LayerKind] | None:
    """Kinds where ``operation`` of ``method`` is allowed unconditionally (None: method not covered)."""
    if method not in METHOD_NAMES and method not in ROWS:
        return None
    found = (entry(method, kind, peft_version) for kind in KINDS)
    return frozenset(e.kind for e in found if e and e.verdict(operation).status.allowed and e.condition is None)


# --------------------------------------------------------------------------------------------------
# Rendering (docs/reference/matrix.md and compatibility.md, written by docs/generate.py; `peft-vision matrix`)
# --------------------------------------------------------------------------------------------------
DOCS_PAGE = "docs/reference/compatibility.md"


def _note_key(item: Entry, verdict: Verdict | Condition) -> tuple[str, str]:
    """A footnote: hand-written reasons in full; measured ones by stage (their PEFT messages are on the docs page)."""
    if item.measured and isinstance(verdict, Verdict):
        stage = grid.STAGES[grid.stage(item.measured)]
        return f"measured: {stage}", f"see {DOCS_PAGE} for the cell's error and alternatives"
    return verdict.reason, verdict.instead


def _entry_text(item: Entry, notes: dict[tuple[str, str], int]) -> str:
    train, merge = item.train, item.merge
    text = SYMBOLS[train.status] + (f" if {item.condition.description}" if item.condition else "")
    if train != merge:
        text += f" / {SYMBOLS[merge.status]}"
    numbers: list[int] = []
    for verdict in (item.condition, train, merge):
        if verdict is None or not verdict.reason:
            continue
        number = notes.setdefault(_note_key(item, verdict), len(notes) + 1)
        if number not in numbers:
            numbers.append(number)
    return text + "".join(f" [{n}]" for n in numbers)


def _first_release(method: str) -> str | None:
    """The release a row's data starts at (None: the oldest lane, which also speaks for older releases)."""
    found = [e.since for e in all_entries() if e.method == method]
    return None if None in found or not found else min(found, key=Version)


def _cell_text(method: str, kind: LayerKind, notes: dict[tuple[str, str], int]) -> str:
    versions = sorted((e for e in all_entries() if e.method == method and e.kind is kind),
                      key=lambda e: Version(e.since or "0"))
    texts = [_entry_text(item, notes) for item in versions]
    # Releases that read the same collapse into one (a measured cell that did not change between the lanes).
    kept = [i for i in range(len(versions)) if i == 0 or texts[i] != texts[i - 1]]
    first = _first_release(method)
    parts = []
    for position, index in enumerate(kept):
        text = texts[index]
        if len(kept) > 1:
            since = versions[index].since if versions[index].since != first else None
            upper = versions[kept[position + 1]].since if position + 1 < len(kept) else None
            scope = f"peft ≥ {since}" if since else ""
            scope = f"{scope}{', ' if scope and upper else ''}{'peft < ' + upper if upper else ''}"
            text = f"{scope}: {text}"
        parts.append(text)
    return "<br>".join(reversed(parts))


def _row_label(method: str) -> str:
    first = _first_release(method)
    return title(method) + (f" (peft ≥ {first})" if first else "")


def _table(rows: list[str], notes: dict[tuple[str, str], int]) -> list[str]:
    lines = ["| method | " + " | ".join(f"`{k.value}`" for k in KINDS) + " |", "|---" * (len(KINDS) + 1) + "|"]
    for row in rows:
        lines.append(f"| {_row_label(row)} | " + " | ".join(_cell_text(row, kind, notes) for kind in KINDS) + " |")
    return lines


def measured_rows() -> tuple[list[str], list[str], list[str]]:
    """(LoRA variant rows, other PEFT method rows, the plugin's own method rows) that the measured grid holds, in the
    order rows.py lists them."""
    present = {e.method for e in all_entries()}
    return tuple([r.name for r in group if r.name in present]  # type: ignore[return-value]
                 for group in (LORA_VARIANTS, OTHER_METHODS, PLUGIN_METHODS))


def matrix_markdown() -> str:
    """The matrix as markdown: legend, three tables (the hand-written rows, the LoRA variants, every other PEFT
    method that wraps layers), one column per layer kind, numbered notes."""
    notes: dict[tuple[str, str], int] = {}
    variants, others, plugins = measured_rows()
    lines = [
        "Legend: ✅ supported · 🔌 provided by this plugin · ❌ refused before the model is touched · ? unverified "
        "(passed through with a warning) · `a / b`: train and save/load / merge (one symbol: all three).",
        "",
        *_table(list(METHODS), notes),
        "",
        "LoRA variants (a config is judged by LoRA's row and by the row of each variant it turns on):",
        "",
        *_table(variants, notes),
        "",
        "Every other PEFT method that wraps layers (measured cells; the reasons are PEFT's own errors, on "
        f"[{DOCS_PAGE}]({DOCS_PAGE})):",
        "",
        *_table(others, notes),
        "",
        "The methods this plugin adds to PEFT (`peft_vision_ext.tuners`, registered when the plugin is imported; "
        "measured cells as above):",
        "",
        *_table(plugins, notes),
        "",
        "Layer kinds: " + "; ".join(f"`{k.value}` {k.description}" for k in KINDS) + ".",
        "",
    ]
    lines += [f"{number}. {reason}.{' Instead: ' + instead + '.' if instead else ''}"
              for (reason, instead), number in notes.items()]
    lines += ["", "Warnings from field experience (never refusals):", ""]
    lines += [f"- {', '.join(METHOD_NAMES[m] for m in METHODS if m in a.methods)} ({a.when}): {a.text}"
              for a in ADVICE]
    lines += ["", "Methods and LoRA variants a newer PEFT adds, and other layer types, pass through to PEFT with a "
              "one-time warning that they are unverified on vision layers."]
    return "\n".join(lines)


def docs_markdown() -> str:
    """docs/reference/compatibility.md: every measured cell with the outcome PEFT gave on each lane, and what to use
    instead."""
    lanes = sorted(grid.load(), key=Version)
    lines = ["# Compatibility matrix: every measured cell", "",
             "Generated by `peft-vision matrix --docs` from `peft_vision_ext/matrix/grid.json` (written by "
             "`python benchmarks/compat_grid.py --write` on each CI lane; a test re-runs every cell and compares). "
             "Each cell is a tiny model holding one layer of the kind, taken through inject, identity at "
             "initialisation, a training step, save/reload and merge with the plugin's refusals off: the outcome is "
             "what PEFT itself does. `ok` cells are supported; any other outcome is refused before the model is "
             "touched (a merge failure refuses merging only; `needs-gpu` stays unverified).",
             "", f"Lanes: {', '.join('peft ' + lane for lane in lanes)}.", ""]
    variants, others, plugins = measured_rows()
    for row in list(METHODS) + variants + others + plugins:
        found = []  # (kind, outcome, instead, lanes): lanes with the same outcome share a line
        for kind in KINDS:
            for lane in lanes:
                result = grid.load()[lane].get(row, {}).get(kind.value)
                if result is None:
                    continue
                item = entry(row, kind, Version(lane))
                instead = (item.train.instead or item.merge.instead) if item else ""
                if found and found[-1][:3] == (kind, result, instead):
                    found[-1][3].append(lane)
                else:
                    found.append((kind, result, instead, [lane]))
        if not found:
            continue
        note = " (the kinds not listed have hand-written entries: see the matrix page)" if row in METHODS else ""
        lines += [f"## {title(row)}{note}", "", "| kind | peft | outcome | instead |", "|---|---|---|---|"]
        for kind, result, instead, on in found:
            text = result.replace("|", "/").replace("`", "'")
            lines.append(f"| `{kind.value}` | {', '.join(on)} | {text} | {instead} |")
        lines.append("")
    return "\n".join(lines)
