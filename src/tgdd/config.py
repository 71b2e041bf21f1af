"""One typed, validated configuration for every step (the single source of truth).

Files are YAML; ``key=value`` overrides address any key, dotted for nested ones, with values
parsed as YAML (``distill.ipc=10``, ``evaluate.archs=[convnet-3,resnet10-ap]``). ``null`` in a
method-dependent key means "the method's published default" (its card, ``tgdd.cards``); the
resolved values (:mod:`tgdd.resolve`, the level above this one) are recorded with every artifact.

The ``distill`` section has one sub-section per method card registered when this module is
imported: a plugin (``TGDD_PLUGINS``) is loaded first by the entry points (:mod:`tgdd.plugins`).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from tgdd.cards import METHODS
from tgdd.errors import TgddError
from tgdd.protocols import PROTOCOLS
from tgdd.registry import suggestion

Semantics = Literal["dsa", "idc", "dsa-all", "mtt"]  # tgdd.dsa_strategy.SEMANTICS (tested equal)


# ``distill.method`` of a synthetic set made by another code base and converted by `tgdd
# import-synthetic` (tgdd.interchange): ``imported-<name>``; `tgdd evaluate` and `tgdd report` take it
# like any method, `tgdd distill` and the matrix do not.
IMPORTED_PREFIX = "imported-"
_IMPORTED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_imported_method(name: str) -> bool:
    """Whether ``name`` addresses an imported synthetic set; a malformed ``imported-...`` name is an error."""
    if not name.startswith(IMPORTED_PREFIX):
        return False
    if not _IMPORTED_NAME.fullmatch(name.removeprefix(IMPORTED_PREFIX)):
        raise TgddError(
            f"method '{name}': an imported set's name is {IMPORTED_PREFIX}<name>, <name> being up to 64 letters, "
            "digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    return True


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Strict):
    data: Path = Field(Path("data"), description="prepared data sets are written under <data>/prepared")
    results: Path = Field(Path("results"), description="experts, synthetic sets, evaluations and tables")


class DataConfig(_Strict):
    root: Path = Field(Path("data/raw"), description="where raw data files are looked for first")
    allow_download: bool = Field(False, description="let torchvision download a data set that is missing")


class MTTExpertsConfig(_Strict):
    """The expert buffers of MTT (its buffer.py): a second recipe, trained by the same step."""

    num_trajectories: int = Field(100, ge=1, description="MTT's experts per data set (num_experts)")
    epochs: int = Field(50, ge=1, description="epochs per expert (train_epochs); E+1 snapshots are kept")
    batch_size: int = Field(256, ge=1, description="expert training batch (batch_train)")
    lr: float = Field(0.01, gt=0, description="constant SGD learning rate (lr_teacher)")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum (mom: 0)")
    weight_decay: float = Field(0.0, ge=0, description="SGD weight decay (l2: 0)")
    augment: str = Field("color_crop_cutout_flip_scale_rotate", description="DSA strategy per sample")
    augment_semantics: Semantics = Field("mtt", description="mtt: DSA's one group per batch, align_corners=True")


class FTDExpertsConfig(MTTExpertsConfig):
    """The expert buffers of FTD (its buffer_FTD.py): MTT's, each step a GSAM step (tgdd.gsam)."""

    num_trajectories: int = Field(100, ge=1, description="FTD's experts per data set (num_experts)")
    rho: float = Field(0.01, ge=0, description="GSAM's radius (rho_max = rho_min of run_buffer.sh: constant)")
    alpha: float = Field(0.4, ge=0, description="GSAM's surrogate-gap coefficient (alpha, buffer_FTD.py's default)")
    adaptive: bool = Field(True, description="ASAM's elementwise |w| scaling of the ascent (adaptive, their default)")


class ExpertsConfig(_Strict):
    arch: str = Field("convnet-3", description="network of the trajectories (also TGDD's feature extractor)")
    seed: int | None = Field(
        0,
        ge=0,
        description="seed of the expert trajectories, shared by every distillation seed (as the authors distil "
        "several times from one set of experts); null: each run's own seed",
    )
    num_trajectories: int = Field(5, ge=1, description="N trajectories (SPEC §2)")
    epochs: int = Field(60, ge=1, description="E epochs; E+1 snapshots are kept")
    batch_size: int = Field(64, ge=1, description="expert training batch (SPEC §2: 64, 128 for ImageNet subsets)")
    lr: float = Field(0.01, gt=0, description="expert SGD learning rate, x0.2 at 2E/3 and 5E/6")
    momentum: float = Field(0.9, ge=0, lt=1, description="expert SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="expert SGD weight decay")
    augment: str = Field("color_crop", description="DSA strategy per sample ('none' to disable)")
    augment_semantics: Semantics = Field(
        "idc", description="how the strategy is read: idc (the authors' pretrain.py: color and crop, every batch), dsa"
    )
    cutmix_prob: float = Field(0.5, ge=0, le=1, description="probability of CutMix per expert batch")
    cutmix_beta: float = Field(1.0, gt=0, description="CutMix Beta(beta, beta) parameter")
    checkpoint_every: int = Field(1, ge=0, description="epochs between resumable checkpoints (0: never)")
    stack: Literal["auto", "always", "never"] = Field(
        "auto",
        description="train the missing trajectories of a recipe as one stacked training (torch.func; equal to "
        "separate runs within float rounding, each trajectory keeps its file, identity and checkpoint) in "
        "`tgdd experts` and `tgdd pipeline`; auto: on CUDA only. Snakemake trains one trajectory per job",
    )
    cuda_graphs: Literal["auto", "always", "never"] = Field(
        "auto",
        description="replay a stacked training's fixed-shape step (forward, loss, backward, SGD) as a CUDA graph "
        "(tgdd.graphs: the same kernels on the same values); auto and always: on CUDA (elsewhere eager; always says "
        "so); a capture that fails runs eagerly, said once in the log",
    )
    train_per_class: int | None = Field(
        None, ge=1, description="train experts on this many images per class (seeded; null: all) for CPU budgets"
    )
    mtt: MTTExpertsConfig = Field(
        MTTExpertsConfig(),
        description="MTT's expert recipe (its own lr, no momentum, its epochs); arch, "
        "train_per_class and checkpoint_every are shared",
    )
    ftd: FTDExpertsConfig = Field(
        FTDExpertsConfig(),
        description="FTD's expert recipe (MTT's with GSAM steps); arch, train_per_class and checkpoint_every are "
        "shared",
    )


class SharedDistillConfig(_Strict):
    """The ``distill`` keys every method shares; each method's own keys are its section
    ``distill.<method>`` (declared on its card in tgdd.cards)."""

    method: str = Field("tgdd", description="distillation method of the single-step commands (see `tgdd list`)")
    ipc: int = Field(10, ge=1, description="stored synthetic images per class")
    iterations: int | None = Field(None, ge=0, description="null: method default (TGDD 10000, DM 20000)")
    factor: int | None = Field(None, ge=1, description="multi-formation factor f; null: method default")
    init: Literal["mix", "mix-random", "real", "real-first", "mix-pooled"] | None = Field(
        None,
        description="start: mix = the first f*f*IPC real images of each class, each downsized (nearest) into a "
        "tile (the authors', TGDD/DANCE default); mix-random = the same with a seeded random draw; real = one "
        "random real image per stored image (DM's default); real-first = the first IPC images; mix-pooled = "
        "f*f tiles, each an independent random draw of IPC images shrunk bilinearly (f = 2: 2x2 average "
        "pooling; IDM's default)",
    )
    lr_img: float | None = Field(None, gt=0, description="image learning rate; null: method/dataset rule")
    momentum: float = Field(0.5, ge=0, lt=1, description="image SGD momentum")
    real_batch: int | None = Field(None, ge=1, description="real images per class per step; null: method default")
    max_syn_per_class: int = Field(200, ge=1, description="decoded synthetic images per class per step")
    dsa_strategy: str | None = Field(
        None,
        description="siamese augmentation during matching; null: the method's (TGDD/DANCE color_crop_cutout, "
        "DM color_crop_cutout_flip_scale_rotate)",
    )
    augment_semantics: Semantics | None = Field(
        None,
        description="how dsa_strategy is read: idc (TGDD/DANCE) or dsa (DM: one group per call); null: the method's",
    )
    batched_classes: bool | Literal["auto"] = Field(
        "auto",
        description="all classes in one forward pass, the per-class steps then replayed: the same update "
        "(docs/fidelity.md); auto: batched on CUDA (2.7x faster per TGDD iteration on an H200), per class on "
        "the CPU (slower batched for wide networks) and for batch-norm matching networks; an execution choice "
        "like the device, recorded in the synthetic set (meta execution), not a reason to redo it",
    )
    compile: bool = Field(
        False,
        description="torch.compile the matching networks: 1.26x per iteration at Fashion-MNIST IPC 10 on 2 CPU "
        "cores, after about a minute of compilation (needs a C++ compiler); for long runs",
    )
    cuda_graphs: Literal["auto", "always", "never"] = Field(
        "auto",
        description="replay a batched distillation iteration (its compute after the draws: augmentation, forward, "
        "losses, image steps) as a CUDA graph (tgdd.graphs: the same kernels on the same values) where the classes "
        "are batched and the augmentation applies the same transforms to every class (TGDD, DANCE); auto and "
        "always: on CUDA; recorded as execution cuda_graph_replays in the synthetic set, not a reason to redo it",
    )
    log_every: int = Field(10, ge=1, description="iterations between loss records")
    checkpoint_every: int = Field(100, ge=0, description="iterations between resumable checkpoints (0: never)")


def _method_sections() -> dict[str, Any]:
    return {
        name: (card.settings, Field(default_factory=card.settings, description=f"{card.summary}: its own settings"))
        for name, card in ((n, METHODS.get(n)) for n in METHODS.names())
    }


DistillConfig = create_model("DistillConfig", __base__=SharedDistillConfig, **_method_sections())


class EvaluateConfig(_Strict):
    archs: list[str] = Field(
        ["convnet-3", "resnet10-ap"], min_length=1, description="networks trained on the synthetic set"
    )
    protocol: str = Field("tgdd", description="tgdd (SPEC §5) or dc (the older DC/DSA/DM protocol)")
    runs: int = Field(3, ge=1, description="freshly initialised networks per architecture")
    epochs: int | None = Field(None, ge=1, description="null: the protocol's epochs")
    augment: Literal["protocol", "none"] = Field(
        "protocol",
        description="the protocol's augmentation (DSA, CutMix where it has it), or none of it: the ablation's "
        "rows without augmentation (config/paper_ablation.yaml)",
    )
    stack_runs: Literal["auto", "always", "never"] = Field(
        "auto",
        description="train the runs of one architecture as one stacked training (tgdd.stacked; equal to separate "
        "runs within float rounding). auto: on CUDA, and on the CPU where the network has a grouped twin "
        "(tgdd.grouped: every zoo network but DenseNet; measured faster there, through vmap slower: "
        "benchmarks/results/stacked_eval_cpu.md); one run and networks that cannot stack: one after another",
    )
    cuda_graphs: Literal["auto", "always", "never"] = Field(
        "auto",
        description="replay the stacked runs' fixed-shape step as a CUDA graph (as experts.cuda_graphs); recorded "
        "as cuda_graph_replays in the evaluation",
    )


class ContinualConfig(_Strict):
    """Continual learning as an evaluation protocol (class-incremental, as DM's CL_DM.py; tgdd.continual)."""

    enabled: bool = Field(
        False,
        description="run the class-incremental evaluation on every cell of the matrix (`tgdd pipeline`, Snakemake, "
        "DVC); `tgdd continual` runs it on one cell whatever this says",
    )
    steps: list[int] = Field(
        [5, 10], min_length=1, description="class-incremental step counts, one result file each (equal class groups)"
    )
    orders: int = Field(5, ge=1, description="seeded class orders (DM: np.random.seed(s) permutations, s = 0..4)")
    runs: int = Field(3, ge=1, description="freshly initialised networks per order and step (DM: num_eval 3)")
    protocol: str = Field("dc", description="training protocol of every network (DM's CL_DM.py: dc)")
    epochs: int | None = Field(None, ge=1, description="null: the protocol's epochs")
    arch: str = Field("convnet-3", description="network trained at every step (DM: ConvNet)")

    @field_validator("steps")
    @classmethod
    def _positive_steps(cls, steps: list[int]) -> list[int]:
        if any(n < 1 for n in steps) or len(set(steps)) != len(steps):
            raise ValueError(f"steps must be distinct counts >= 1, got {steps}")
        return steps

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, protocol: str) -> str:
        PROTOCOLS.get(protocol)
        return protocol

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        from tgdd.models import check_model_name

        return check_model_name(arch)


class TrackingConfig(_Strict):
    enabled: bool = Field(True, description="log runs to MLflow (MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    experiment: str = Field("tgdd", min_length=1, description="MLflow experiment name (one per project config)")
    log_steps: bool = Field(
        True,
        description="distill and evaluate log their own runs; false: `tgdd report` logs them all "
        "(saves each job ~2.5 s of MLflow start-up; the report logs whatever is missing either way)",
    )


VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
CELL_KEYS = {"dataset", "seed", "variant", "distill.method", "distill.ipc"}  # what makes a cell a cell
CELL_SECTIONS = {"matrix", "paths", "per_dataset", "tracking", "variant"}


class MatrixConfig(_Strict):
    """The experiment matrix that `tgdd pipeline` and the workflow expand."""

    datasets: list[str] = Field(["digits"], min_length=1, description="data sets of the matrix")
    methods: list[str] = Field(["tgdd", "dm", "random"], min_length=1, description="methods of the matrix")
    ipcs: list[int] = Field([1, 10], min_length=1, description="images per class of the matrix")
    seeds: list[int] = Field(
        [0], min_length=1, description="seeds of the matrix (each: distillation, evaluation; experts: experts.seed)"
    )

    variants: dict[str, dict[str, Any]] = Field(
        {},
        description="named variants of every cell, each a few overrides applied last (e.g. "
        "{alpha-0.5: {distill.tgdd.alpha: 0.5}}): an axis of the matrix for ablations and sweeps, in result "
        "paths (variant-<name>), records, MLflow tags and the report; empty: no variant axis",
    )

    @field_validator("ipcs")
    @classmethod
    def _positive(cls, ipcs: list[int]) -> list[int]:
        if any(ipc < 1 for ipc in ipcs):
            raise ValueError(f"every IPC must be >= 1, got {ipcs}")
        return ipcs

    @field_validator("variants")
    @classmethod
    def _variant_names_and_keys(cls, variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in variants.items():
            if not VARIANT_NAME.fullmatch(name):
                raise ValueError(f"variant name '{name}' must match {VARIANT_NAME.pattern} (it is a path component)")
            if not isinstance(overrides, dict):
                raise ValueError(f"variant '{name}' must map config keys to values, got {overrides!r}")
            for key in overrides:
                if key in CELL_KEYS or key.split(".")[0] in CELL_SECTIONS:
                    raise ValueError(f"variant '{name}' may not set '{key}': the matrix or the paths set it")
        return variants


class Config(_Strict):
    seed: int = Field(0, ge=0, description="all randomness derives from it")
    dataset: str = Field("digits", description="data set of the single-step commands (see `tgdd list`)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (null: torch's default)")
    deterministic: bool = Field(False, description="deterministic CUDA kernels (slower; CPU is always deterministic)")
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    experts: ExpertsConfig = ExpertsConfig()
    distill: DistillConfig = DistillConfig()  # type: ignore[valid-type]
    evaluate: EvaluateConfig = EvaluateConfig()
    continual: ContinualConfig = ContinualConfig()
    matrix: MatrixConfig = MatrixConfig()
    tracking: TrackingConfig = TrackingConfig()
    per_dataset: dict[str, dict[str, Any]] = Field(
        {}, description="partial configs merged in when that data set is selected (e.g. its IPCs, epochs)"
    )
    variant: str | None = Field(
        None, description="the variant of matrix.variants this cell runs (its overrides apply last); null: none"
    )

    _source: tuple[dict[str, Any], tuple[str, ...]] = PrivateAttr(default=({}, ()))
    _without_variant: Config | None = PrivateAttr(default=None)

    @property
    def variant_overrides(self) -> dict[str, Any]:
        """The overrides of this cell's variant (none without one)."""
        return dict(self.matrix.variants.get(self.variant, {})) if self.variant is not None else {}

    def without_variant(self) -> Config:
        """This cell without its variant's overrides: what the variant changes is the difference."""
        if self.variant is None:
            return self
        if self._without_variant is None:
            self._without_variant = self.with_overrides("variant=null")
        return self._without_variant

    @property
    def experts_seed(self) -> int:
        """The seed of the expert trajectories: ``experts.seed``, or ``seed`` where that is null."""
        return self.seed if self.experts.seed is None else self.experts.seed

    def with_overrides(self, *overrides: str) -> Config:
        """This config rebuilt from its source with more overrides (``per_dataset`` reapplied)."""
        tree, previous = self._source
        return build_config(tree, [*previous, *overrides])

    @model_validator(mode="after")
    def _known_names(self) -> Config:
        from tgdd.data.registry import get_dataset
        from tgdd.dsa_strategy import check_strategy
        from tgdd.models import check_model_name

        for name in [self.dataset, *self.matrix.datasets]:
            get_dataset(name)
        if not is_imported_method(self.distill.method):  # imported sets are evaluated, never distilled
            _check_method(self.distill.method)
        for name in self.matrix.methods:
            _check_method(name)
        for name in [self.experts.arch, *self.evaluate.archs]:
            check_model_name(name)
        PROTOCOLS.get(self.evaluate.protocol)
        if self.distill.dsa_strategy is not None:
            check_strategy(self.distill.dsa_strategy)
        check_strategy(self.experts.augment)
        for name in self.per_dataset:
            get_dataset(name)
        if self.variant is not None and self.variant not in self.matrix.variants:
            known = ", ".join(self.matrix.variants) or "none"
            raise ValueError(f"unknown variant '{self.variant}' (matrix.variants: {known})")
        return self


def _check_method(name: str) -> None:
    """A registered method, with its section in this schema: a card registered after this module was
    imported (a plugin loaded too late) has none, and would fail later for want of it."""
    METHODS.get(name)
    if name not in DistillConfig.model_fields:
        raise TgddError(
            f"method '{name}' was registered after tgdd.config was imported, so distill.{name} is missing: "
            "load TGDD_PLUGINS first (tgdd.plugins.load_plugins)"
        )


# Keys that moved into a method's own section (tgdd.cards): the error names their new place.
MOVED_KEYS = {
    "distill.alpha": "distill.tgdd.alpha (DANCE's calibration weight: distill.dance.calib_weight)",
    "distill.expert_region": "distill.tgdd.expert_region",
}


def _suggest_key(path: list[str], model: type[BaseModel]) -> str:
    """Error text for an unknown key, with the closest valid key of its section."""
    dotted = ".".join(path)
    if dotted in MOVED_KEYS:
        return f"config key '{dotted}' is now {MOVED_KEYS[dotted]}"
    for depth, part in enumerate(path):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(path[:depth]) or "top level"
            return f"unknown config key '{'.'.join(path)}' ({where}).{suggestion(part, list(fields))}"
        annotation = fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return f"bad config key '{'.'.join(path)}'"


def _one_line(error: ValidationError) -> str:
    """The first validation problem as one readable line."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if first["type"] == "extra_forbidden":
        return _suggest_key(loc, Config)
    message = first["msg"].removeprefix("Value error, ")
    return f"config key '{'.'.join(loc)}': {message}" if loc else message


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``dotted == 'a.b'``, creating sections as needed."""
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise TgddError(f"cannot set '{dotted}': '{part}' is not a section")
        node = child
    node[leaf] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["distill.ipc=10", ...]`` -> ``[("distill.ipc", 10), ...]`` with YAML-typed values."""
    pairs = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise TgddError(f"override '{item}' is not of the form key=value")
        try:
            pairs.append((key.strip(), yaml.safe_load(raw) if raw else None))
        except yaml.YAMLError:
            raise TgddError(f"override '{item}': value is not valid YAML") from None
    return pairs


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` merged into a copy of ``base``, section by section."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def build_config(
    tree: dict[str, Any] | None = None, overrides: list[str] | None = None, check_per_dataset: bool = True
) -> Config:
    """Validate a config tree (plus overrides) into a :class:`Config`, or raise one clear TgddError.

    Precedence: the tree, then ``per_dataset[<selected dataset>]``, then the overrides.
    """
    source = copy.deepcopy(tree or {})  # overrides must not leak into the caller's tree
    pairs = parse_overrides(overrides or [])
    with_overrides = copy.deepcopy(source)
    for key, value in pairs:
        set_dotted(with_overrides, key, value)
    dataset = with_overrides.get("dataset", Config.model_fields["dataset"].default)
    per_dataset = with_overrides.get("per_dataset") or {}
    final = with_overrides
    merged = isinstance(per_dataset, dict) and isinstance(per_dataset.get(dataset), dict)
    if merged:
        final = deep_merge(source, per_dataset[dataset])
        for key, value in pairs:
            set_dotted(final, key, value)
    final = _with_variant(final)
    try:
        config = Config.model_validate(final)
    except ValidationError as error:
        prefix = f"(with per_dataset.{dataset}) " if merged else ""
        if final.get("variant") is not None:
            prefix += f"(with variant {final['variant']}) "
        raise TgddError(prefix + _one_line(error)) from None
    config._source = (source, tuple(overrides or ()))
    if check_per_dataset:  # every per-dataset block must be valid, not only the selected one
        for name in config.per_dataset:
            if name != config.dataset:
                build_config(source, [*(overrides or ()), f"dataset={name}"], check_per_dataset=False)
    return config


def _with_variant(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` with its variant's overrides applied last (after ``per_dataset`` and the command
    line: a variant is what its cell is, e.g. an ablation row with zero iterations stays one under a
    smoke test's ``distill.iterations=2``). Unknown variants and bad keys are left to validation."""
    name = tree.get("variant")
    variants = (tree.get("matrix") or {}).get("variants") if isinstance(tree.get("matrix"), dict) else None
    if name is None or not isinstance(variants, dict) or not isinstance(variants.get(name), dict):
        return tree
    tree = copy.deepcopy(tree)
    for key, value in variants[name].items():
        set_dotted(tree, str(key), copy.deepcopy(value))
    return tree


def load_config(path: Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config file (or the defaults when ``path`` is None) and apply overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise TgddError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise TgddError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise TgddError(f"config file {path} must hold a mapping at the top level")
        tree = loaded or {}
    return build_config(tree, overrides)


def config_dict(config: Config) -> dict[str, Any]:
    """JSON-ready form of a config (paths as strings), for artifacts and tracking."""
    return config.model_dump(mode="json")


def section_settings(config: Config, name: str, *drop: str) -> dict[str, Any]:
    """One config section as plain data, without ``drop`` (keys an output's path already holds):
    what a step's output depends on, for the workflow's ``params``, the records in artifacts and
    `tgdd pipeline`'s freshness check."""
    return {key: value for key, value in config_dict(config)[name].items() if key not in drop}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: for parameter logging and key listings."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def describe_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default, description)`` for every key: the README's config table is made from it."""
    rows: list[tuple[str, str, str]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += describe_keys(annotation, f"{prefix}{name}.")
            continue
        default = info.default
        shown = "null" if default is None else str(default.as_posix() if isinstance(default, Path) else default)
        rows.append((f"{prefix}{name}", shown, info.description or ""))
    return rows


def keys_markdown() -> str:
    lines = ["| key | default | what it does |", "|---|---|---|"]
    lines += [f"| `{key}` | `{default}` | {text} |" for key, default, text in describe_keys()]
    return "\n".join(lines) + "\n"
