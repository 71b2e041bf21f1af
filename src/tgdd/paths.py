"""Where every artifact lives: one function per artifact, used by the CLI, the pipeline
and the workflow layers alike."""

from __future__ import annotations

from pathlib import Path

from tgdd.config import Config


def prepared_dir(cfg: Config, dataset: str | None = None) -> Path:
    return cfg.paths.data / "prepared" / (dataset or cfg.dataset)


def experts_dir(cfg: Config, recipe: str = "tgdd") -> Path:
    """The trajectories of one recipe (tgdd.resolve.EXPERT_RECIPES) for a data set, arch and experts'
    seed (``experts.seed``: shared by the distillation seeds)."""
    return cfg.paths.results / "experts" / cfg.dataset / recipe / cfg.experts.arch / f"seed{cfg.experts_seed}"


def trajectory_file(cfg: Config, index: int, recipe: str = "tgdd") -> Path:
    """Expert trajectory ``index`` of ``cfg`` (its own workflow job and file)."""
    return experts_dir(cfg, recipe) / f"trajectory_{index:02d}.pt"


def synthetic_dir(cfg: Config) -> Path:
    d = cfg.distill
    return cfg.paths.results / "synthetic" / cfg.dataset / d.method / f"ipc{d.ipc}" / f"seed{cfg.seed}"


def synthetic_file(cfg: Config) -> Path:
    return synthetic_dir(cfg) / "synthetic.pt"


def export_dir(cfg: Config, fmt: str) -> Path:
    """Where `tgdd export-synthetic` writes the synthetic set of ``cfg`` in another code base's format."""
    d = cfg.distill
    return cfg.paths.results / "export" / cfg.dataset / d.method / f"ipc{d.ipc}" / f"seed{cfg.seed}" / fmt


def evaluation_file(cfg: Config, arch: str) -> Path:
    d = cfg.distill
    name = f"{arch}__{cfg.evaluate.protocol}.json"
    return cfg.paths.results / "eval" / cfg.dataset / d.method / f"ipc{d.ipc}" / f"seed{cfg.seed}" / name


def tables_dir(cfg: Config) -> Path:
    return cfg.paths.results / "tables"


def class_overlap_file(cfg: Config) -> Path:
    """The class-overlap table of every analysed data set (one ``dataset`` column)."""
    return tables_dir(cfg) / "class_overlap.csv"


def tsne_figure(cfg: Config, ipc: int) -> Path:
    """The t-SNE figure of ``cfg.dataset``'s synthetic sets at ``ipc`` images per class."""
    return tables_dir(cfg) / f"tsne_{cfg.dataset}_ipc{ipc}.png"
