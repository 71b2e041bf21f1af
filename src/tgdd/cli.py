"""The `tgdd` command: one subcommand per pipeline step, each ``--config FILE [key=value ...]``.

Thin on purpose: it parses arguments, loads the config and calls :mod:`tgdd.steps`. Heavy
libraries are imported only by the step that runs, so ``tgdd --help`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tgdd.config import Config

STEPS = {
    "prepare": "read a data set from disk into the prepared format (with checksums)",
    "experts": "train the expert trajectories (N networks, E+1 snapshots each)",
    "distill": "distill one synthetic set (distill.method, distill.ipc)",
    "evaluate": "train fresh networks on a synthetic set and test them (evaluate.*)",
    "continual": "class-incremental evaluation of a synthetic set in continual.steps steps (continual.*)",
    "report": "collect every evaluation into results/tables/summary.{csv,md}",
    "pipeline": "run the whole matrix (matrix.*) in one process, redoing only what is missing or out of date",
}
INTERCHANGE_FORMATS = ("dc", "idc", "mtt")  # tgdd.interchange.FORMATS (tested equal)
INTERCHANGE = {
    "import-synthetic": "turn a synthetic set written by another code base into a tgdd set (docs/interchange.md)",
    "export-synthetic": "write the synthetic set of distill.method/ipc in another code base's format",
}


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``tgdd`` parser and each step's own parser (by step name)."""
    parser = argparse.ArgumentParser(
        prog="tgdd",
        description="Trajectory Guided Dataset Distillation (TGDD) and its baselines, reproducibly.",
        epilog="Example: tgdd distill --config config/quick.yaml distill.method=dm distill.ipc=10",
    )
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for step, help_text in STEPS.items():
        p = sub.add_parser(step, help=help_text, description=help_text)
        p.add_argument("--config", type=Path, default=None, help="YAML config file (default: built-in defaults)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key, dotted")
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
        if step == "pipeline":
            p.add_argument("-n", "--dry-run", action="store_true", help="list the steps that would run")
        if step == "experts":
            one = p.add_mutually_exclusive_group()
            one.add_argument("--index", type=int, default=None, help="train only trajectory INDEX (one workflow job)")
            one.add_argument("--gather", action="store_true", help="only write the manifest from finished trajectories")
            p.add_argument("--recipe", default=None, help="tgdd, mtt or ftd (default: distill.method's, else tgdd)")
    _interchange_parsers(sub)
    show = sub.add_parser("config", help="print the resolved configuration as YAML")
    show.add_argument("--config", type=Path, default=None)
    show.add_argument("overrides", nargs="*", metavar="key=value")
    sub.add_parser("list", help="list data sets, models, methods and protocols")
    return parser, dict(sub.choices)


def _interchange_parsers(sub: argparse._SubParsersAction) -> None:
    formats = "{" + ",".join(INTERCHANGE_FORMATS) + "}"
    for step, help_text in INTERCHANGE.items():
        p = sub.add_parser(step, help=help_text, description=help_text)
        p.add_argument("--format", required=True, metavar=formats, help="dc: res_*.pt, idc: data_*.pt, mtt: the pair")
        p.add_argument("--config", type=Path, default=None, help="YAML config file (default: built-in defaults)")
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
        p.add_argument("--zca", type=Path, default=None, help="mtt: the ZCA transform the set is whitened with")
        p.add_argument("--mean", type=_floats, default=None, help="mean/std normalisation: mean, comma-separated")
        p.add_argument("--std", type=_floats, default=None, help="and std (default: docs/interchange.md)")
        if step == "export-synthetic":
            p.add_argument("--out", type=Path, default=None, help="folder to write (default: results/export/...)")
            p.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key, dotted")
            continue
        p.add_argument("items", nargs="+", metavar="FILE|key=value", help="the file(s), then config overrides")
        p.add_argument("--name", default=None, help="the set becomes method imported-<name> (default: the format)")
        p.add_argument("--factor", type=int, default=None, help="idc: the multi-formation factor (required)")
        p.add_argument("--exp", type=int, default=None, help="dc: which experiment of the file (if several)")
        p.add_argument("--no-zca", action="store_true", help="mtt: the set is not ZCA-whitened")
        p.add_argument("--source", default=None, help="where the files come from (paper, URL), recorded")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None


def _split_items(items: list[str]) -> tuple[list[Path], list[str]]:
    """Import's positional arguments: an existing file is a file, ``key=value`` an override."""
    files: list[Path] = []
    overrides: list[str] = []
    for item in items:
        if "=" in item and not Path(item).exists():
            overrides.append(item)
        else:
            files.append(Path(item))
    return files, overrides


def _interchange(args: argparse.Namespace, cfg: Config) -> list[Path]:
    from tgdd import steps

    common = {"zca": args.zca, "mean": args.mean, "std": args.std}
    if args.step == "export-synthetic":
        return steps.export_synthetic(cfg, args.format, out_dir=args.out, **common)
    options = {"name": args.name, "factor": args.factor, "experiment": args.exp, "no_zca": args.no_zca}
    return steps.import_synthetic(cfg, args.format, args.files, source=args.source, **options, **common)


def _list() -> None:
    from tgdd.cards import METHODS
    from tgdd.data.registry import dataset_names
    from tgdd.models import model_names
    from tgdd.protocols import PROTOCOLS

    print("datasets: ", ", ".join(dataset_names()))
    print("models:   ", ", ".join(model_names()))
    print("protocols:", ", ".join(PROTOCOLS.names()))
    print("methods:")
    for name in METHODS.names():
        print(f"  {name:<8} {METHODS.get(name).summary}")


def _run(args: argparse.Namespace) -> int:
    from tgdd.plugins import load_plugins

    load_plugins()  # before tgdd.config is imported: a plugin's card adds a section to the config's schema
    if args.step == "list":
        _list()
        return 0
    import yaml

    from tgdd.config import config_dict, load_config

    if args.step == "import-synthetic":
        args.files, args.overrides = _split_items(args.items)
    cfg = load_config(args.config, args.overrides)
    if args.step == "config":
        print(yaml.safe_dump(config_dict(cfg), sort_keys=False), end="")
        return 0
    from tgdd import steps

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    kwargs = {"dry_run": True} if getattr(args, "dry_run", False) else {}
    if args.step == "experts":
        kwargs = {"index": args.index, "gather": args.gather, "recipe": args.recipe}
    # -q: WARNING and above, which also hides the progress bars (tgdd.progress: they are INFO output)
    if args.step in INTERCHANGE:
        written = _interchange(args, cfg)
    else:
        written = (steps.pipeline if args.step == "pipeline" else steps.MATRIX_STEPS[args.step])(cfg, **kwargs)
    for path in written:
        print(f"wrote {path}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, each step's options, files and ``key=value`` overrides in any order.

    argparse's plain parsing ends a step's positionals at the first option after them, so that
    ``import-synthetic --format dc FILE --name x dataset=cifar10`` would leave ``dataset=cifar10``
    unrecognised; ``parse_intermixed_args`` collects the positionals around the options, but
    cannot parse through subparsers: the step is picked here, its own parser parses the rest.
    """
    parser, steps = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in steps:  # no step, --help, or an unknown step: argparse's own message
        return parser.parse_args(argv)
    args = steps[argv[0]].parse_intermixed_args(argv[1:])
    args.step = argv[0]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tgdd.errors import TgddError

    try:
        return _run(args)
    except TgddError as exc:
        print(f"tgdd {args.step}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tgdd {args.step}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("TGDD_DEBUG"):
            raise
        print(
            f"tgdd {args.step}: unexpected error: {type(exc).__name__}: {exc} (TGDD_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
