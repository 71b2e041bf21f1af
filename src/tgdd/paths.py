"""Where every artifact lives: one function per artifact, used by the CLI, the pipeline
and the workflow layers alike."""

from __future__ import annotations

from pathlib import Path

from tgdd.config import Config

VARIANT_PREFIX = "/variant-"


def variant_suffix(cfg: Config) -> str:
    """The path component of a cell's variant (``matrix.variants``): ``/variant-<name>``, or
    nothing without one, so that a config without variants keeps its paths."""
    return "" if cfg.variant is None else f"{VARIANT_PREFIX}{cfg.variant}"


def experts_variant_suffix(cfg: Config) -> str:
    """:func:`variant_suffix` where the variant changes the experts (its ``experts`` section differs
    from the cell's without the variant); other variants, and one that sets an experts key to the
    value it has anyway, share the trajectories of the cell without a variant."""
    if cfg.variant is None or cfg.without_variant().experts == cfg.experts:
        return ""
    return variant_suffix(cfg)


def variant_record(cfg: Config) -> dict[str, object]:
    """What a result records of its cell's variant (nothing without one, so that results of a config
    without variants keep their bytes): its name and overrides."""
    return {"variant": cfg.variant, "variant_overrides": cfg.variant_overrides} if cfg.variant is not None else {}


def prepared_dir(cfg: Config, dataset: str | None = None) -> Path:
    return cfg.paths.data / "prepared" / (dataset or cfg.dataset)


def experts_dir(cfg: Config, recipe: str = "tgdd") -> Path:
    """The trajectories of one recipe (tgdd.resolve.EXPERT_RECIPES) for a data set, arch and experts'
    seed (``experts.seed``: shared by the distillation seeds)."""
    seed = f"seed{cfg.experts_seed}{experts_variant_suffix(cfg)}"
    return cfg.paths.results / "experts" / cfg.dataset / recipe / cfg.experts.arch / seed


def trajectory_file(cfg: Config, index: int, recipe: str = "tgdd") -> Path:
    """Expert trajectory ``index`` of ``cfg`` (its own workflow job and file)."""
    return experts_dir(cfg, recipe) / f"trajectory_{index:02d}.pt"


def synthetic_dir(cfg: Config) -> Path:
    d = cfg.distill
    return (
        cfg.paths.results
        / "synthetic"
        / cfg.dataset
        / d.method
        / f"ipc{d.ipc}"
        / f"seed{cfg.seed}{variant_suffix(cfg)}"
    )


def synthetic_file(cfg: Config) -> Path:
    return synthetic_dir(cfg) / "synthetic.pt"


def export_dir(cfg: Config, fmt: str) -> Path:
    """Where `tgdd export-synthetic` writes the synthetic set of ``cfg`` in another code base's format."""
    d = cfg.distill
    seed = f"seed{cfg.seed}{variant_suffix(cfg)}"
    return cfg.paths.results / "export" / cfg.dataset / d.method / f"ipc{d.ipc}" / seed / fmt


def evaluation_file(cfg: Config, arch: str) -> Path:
    d = cfg.distill
    name = f"{arch}__{cfg.evaluate.protocol}.json"
    seed = f"seed{cfg.seed}{variant_suffix(cfg)}"
    return cfg.paths.results / "eval" / cfg.dataset / d.method / f"ipc{d.ipc}" / seed / name


def continual_file(cfg: Config, steps: int) -> Path:
    """The class-incremental evaluation (``tgdd continual``) of the synthetic set of ``cfg`` in ``steps``
    steps: ``results/continual/`` + the set's own place under ``results/synthetic/`` (its variant included)
    + ``<continual.arch>__steps<n>.json``."""
    cell = synthetic_dir(cfg).relative_to(cfg.paths.results / "synthetic")
    return cfg.paths.results / "continual" / cell / f"{cfg.continual.arch}__steps{steps}.json"


def tables_dir(cfg: Config) -> Path:
    return cfg.paths.results / "tables"


def class_overlap_file(cfg: Config) -> Path:
    """The class-overlap table of every analysed data set (one ``dataset`` column)."""
    return tables_dir(cfg) / "class_overlap.csv"


def tsne_figure(cfg: Config, ipc: int) -> Path:
    """The t-SNE figure of ``cfg.dataset``'s synthetic sets at ``ipc`` images per class."""
    return tables_dir(cfg) / f"tsne_{cfg.dataset}_ipc{ipc}.png"
