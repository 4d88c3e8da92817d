"""The one method table: the rows of the compatibility matrix, i.e. every PEFT method that wraps layers, and the LoRA
variants users pick as often as methods (DoRA, rsLoRA, each ``init_lora_weights``). Data only: a row's name, title,
PEFT config class, whether the plugin's presets cover it, and the small config its verification cell uses
(:mod:`peft_vision_ext.compat.verify`). The matrix (titles, config classes), the presets (which methods they serve),
the verification harness and the model card all read it.

Methods that do not wrap Linear/Conv layers are not rows: prompt learning (soft prompts, prefixes, CPT,
Cartridge), adaption prompts (LLaMA attention only), ShadowPEFT (wraps whole decoder blocks), X-LoRA (a mixture
of existing LoRA adapters) and Poly (needs task ids in every forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One row: ``config`` is the PEFT config class name, ``options`` the cell's small config (besides targets)."""
    name: str
    title: str
    config: str
    options: dict[str, Any] = field(default_factory=dict)
    #: the init step that needs calibration data ("eva" runs after get_peft_model, "corda" before): see verify.py
    init: str = ""
    #: the init rewrites the base weights (PiSSA, OLoRA, CorDA, LoftQ): adapters are saved through PEFT's conversion
    #: to a plain LoRA of the original base (``path_initial_model_for_weight_conversion``)
    rewrites_base: bool = False
    #: PEFT runs this row's init on CUDA only: without a GPU its cells say so and are not run
    needs_gpu: bool = False
    #: False for methods whose adapter changes the output at initialisation by design (random vector banks)
    identity_init: bool = True
    #: the plugin's presets (and its default targets) serve this method
    presets: bool = False
    #: a method of this plugin (:mod:`peft_vision_ext.tuners`), registered with PEFT when the plugin is imported
    plugin: bool = False
    #: what to do instead where the grid measured this method's merge failing ("": the training alternatives)
    merge_instead: str = ""

    @property
    def peft_type(self) -> str:
        """The PEFT method (``peft_type`` value, lower case) the row configures."""
        return self.name.split("-")[0] if self.name.startswith("lora-") else self.name


def _row(name: str, title: str, config: str, **options: Any) -> Row:
    return Row(name, title, config, options)


def _lora(variant: str, title: str, init: str = "", rewrites_base: bool = False, needs_gpu: bool = False,
          **options: Any) -> Row:
    return Row(f"lora-{variant}", title, "LoraConfig", {"r": 4, "lora_alpha": 8, **options}, init, rewrites_base,
               needs_gpu)


#: The ten rows with hand-written matrix entries (their reasons are written for people, in verdicts.py). ``options``
#: is their verification cell's config; ``lora-slices`` is a LoRA layout (:mod:`peft_vision_ext.fused`), not a method.
CURATED_ROWS: tuple[Row, ...] = (
    Row("lora", "LoRA", "LoraConfig", {"r": 4, "lora_alpha": 8}, presets=True),
    Row("lora-slices", "LoRA (fused slices)", "LoraConfig", {"r": 4, "lora_alpha": 8}),
    Row("loha", "LoHa", "LoHaConfig", {"r": 4, "alpha": 8}, presets=True),
    Row("lokr", "LoKr", "LoKrConfig", {"r": 4, "alpha": 8}, presets=True),
    Row("adalora", "AdaLoRA", "AdaLoraConfig", {"init_r": 4, "target_r": 2, "total_step": 10}, presets=True),
    # feedforward (input) scaling, the harder of IA3's two modes (its grouped-conv merge broke before 0.21): the
    # harness adds the cell's target to feedforward_modules
    Row("ia3", "IA3", "IA3Config", presets=True),
    Row("oft", "OFT", "OFTConfig", {"r": 0, "oft_block_size": 4}),
    Row("boft", "BOFT", "BOFTConfig", {"boft_block_size": 4, "boft_n_butterfly_factor": 1}),
    Row("vera", "VeRA", "VeraConfig", {"r": 4}),
    Row("fourierft", "FourierFT", "FourierFTConfig", {"n_frequency": 16, "init_weights": True}),
)
CURATED: tuple[str, ...] = tuple(row.name for row in CURATED_ROWS)
CURATED_BY_NAME: dict[str, Row] = {row.name: row for row in CURATED_ROWS}

LORA_VARIANTS: tuple[Row, ...] = (
    _lora("dora", "LoRA + DoRA", use_dora=True),
    _lora("rslora", "LoRA + rsLoRA", use_rslora=True),
    _lora("gaussian", "LoRA init gaussian", init_lora_weights="gaussian"),
    _lora("orthogonal", "LoRA init orthogonal", init_lora_weights="orthogonal"),
    _lora("pissa", "LoRA init PiSSA", rewrites_base=True, init_lora_weights="pissa"),
    _lora("olora", "LoRA init OLoRA", rewrites_base=True, init_lora_weights="olora"),
    _lora("eva", "LoRA init EVA", init="eva", init_lora_weights="eva"),
    _lora("corda", "LoRA init CorDA", init="corda", rewrites_base=True, init_lora_weights="corda"),
    _lora("loftq", "LoRA init LoftQ", init="loftq", rewrites_base=True, needs_gpu=True, init_lora_weights="loftq"),
)

#: Every other PEFT method that wraps layers, with a cell config sized for the cell's 64-feature / 8-channel layers.
OTHER_METHODS: tuple[Row, ...] = (
    _row("adamss", "AdaMSS", "AdamssConfig", r=4),
    _row("beft", "BEFT", "BeftConfig"),
    _row("bone", "Bone", "BoneConfig", r=4),
    _row("c3a", "C3A", "C3AConfig", block_size=4, init_weights=True),
    _row("deft", "DEFT", "DeftConfig", r=4),
    _row("delora", "DeLoRA", "DeloraConfig", r=4),
    _row("frod", "FRoD", "FrodConfig"),
    _row("glora", "GLoRA", "GloraConfig", r=4),
    _row("gralora", "GraLoRA", "GraloraConfig", r=4, gralora_k=2),
    _row("hira", "HiRA", "HiraConfig", r=4),
    _row("hra", "HRA", "HRAConfig", r=4),
    _row("lily", "Lily", "LilyConfig", r=4),
    _row("ln_tuning", "LN tuning", "LNTuningConfig"),
    _row("miss", "MiSS", "MissConfig", r=4),
    _row("osf", "OSF", "OSFConfig"),
    _row("paca", "PaCA", "PacaConfig", r=4),  # peft >= 0.22
    _row("peanut", "PEANuT", "PeanutConfig", r=4),
    _row("psoft", "PSOFT", "PsoftConfig", r=4),
    _row("pvera", "PVeRA", "PveraConfig", r=4),
    _row("randlora", "RandLoRA", "RandLoraConfig", r=4),
    _row("road", "RoAd", "RoadConfig"),
    _row("shira", "SHiRA", "ShiraConfig", r=4),
    _row("supertuning", "SuperTuning", "SupertuningConfig"),
    _row("tinylora", "TinyLoRA", "TinyLoraConfig"),
    _row("trainable_tokens", "Trainable tokens", "TrainableTokensConfig", token_indices=[0, 1, 2]),
    Row("unilora", "UniLoRA", "UniLoraConfig", {"r": 4}, identity_init=False),
    Row("vblora", "VBLoRA", "VBLoRAConfig", {"r": 4, "vector_length": 4, "num_vectors": 32}, identity_init=False),
    _row("waveft", "WaveFT", "WaveFTConfig", n_frequency=16),
)

#: The PEFT methods this plugin adds (:mod:`peft_vision_ext.tuners`): measured by the same grid as PEFT's own.
PLUGIN_METHODS: tuple[Row, ...] = (
    Row("ssf", "SSF", "SSFConfig", presets=True, plugin=True, merge_instead=(
        "merge on a full-precision copy: load the base model without quantization, load the adapter into it, then "
        "merge_and_unload; or keep the adapter unmerged")),
    Row("adaptformer", "AdaptFormer", "AdaptFormerConfig", presets=True, plugin=True, merge_instead=(
        "keep the adapter unmerged: its branch is two small projections per block at inference (PeftModel.unload() "
        "drops it)")),
)

GENERATED: tuple[Row, ...] = LORA_VARIANTS + OTHER_METHODS + PLUGIN_METHODS
ROWS: dict[str, Row] = {row.name: row for row in GENERATED}
#: The methods the plugin's presets serve (``preset_config``, ``target_modules=None``).
PRESET_METHODS: tuple[str, ...] = tuple(row.name for row in CURATED_ROWS + PLUGIN_METHODS if row.presets)


#: PEFT method types that are not rows (see the module docstring), by ``peft_type`` value.
NOT_ROWS = frozenset({"prompt_tuning", "multitask_prompt_tuning", "p_tuning", "prefix_tuning", "cpt", "cartridge",
                      "adaption_prompt", "shadow", "xlora", "poly"})


def unknown_methods() -> list[Row]:
    """Methods of the installed PEFT that wrap layers and that this module does not know (a newer PEFT release):
    rows with PEFT's default config, for ``peft-vision matrix --verify``."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    known = {row.peft_type for row in GENERATED} | set(CURATED) | NOT_ROWS
    found = []
    for peft_type, config_class in PEFT_TYPE_TO_CONFIG_MAPPING.items():
        name = str(getattr(peft_type, "value", peft_type)).lower()
        if name not in known:
            found.append(Row(name, config_class.__name__.removesuffix("Config"), config_class.__name__))
    return found


def row_for(name: str) -> Row | None:
    """The row called ``name``: a known one, or one of the installed PEFT's unknown methods."""
    if name in ROWS or name in CURATED:  # the hand-written rows have no Row: verify.py configures them itself
        return ROWS.get(name)
    return next((row for row in unknown_methods() if row.name == name), None)


def config_of(row: Row) -> type:
    """The row's config class: PEFT's, or for the plugin's own methods the one registered with PEFT (by the hook
    ``vision-peft-methods``, when the plugin is imported)."""
    if row.plugin:
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        return PEFT_TYPE_TO_CONFIG_MAPPING[row.name.upper()]
    import peft

    return getattr(peft, row.config)


def installed(row: Row) -> bool:
    """Whether the installed PEFT has the row's config class (the plugin's own methods: always)."""
    import peft

    return row.plugin or hasattr(peft, row.config)
