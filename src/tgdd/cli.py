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

STEPS = {
    "prepare": "read a data set from disk into the prepared format (with checksums)",
    "experts": "train the expert trajectories (N networks, E+1 snapshots each)",
    "distill": "distill one synthetic set (distill.method, distill.ipc)",
    "evaluate": "train fresh networks on a synthetic set and test them (evaluate.*)",
    "report": "collect every evaluation into results/tables/summary.{csv,md}",
    "pipeline": "run the whole matrix (matrix.*) in one process, redoing only what is missing or out of date",
}


def _parser() -> argparse.ArgumentParser:
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
    show = sub.add_parser("config", help="print the resolved configuration as YAML")
    show.add_argument("--config", type=Path, default=None)
    show.add_argument("overrides", nargs="*", metavar="key=value")
    sub.add_parser("list", help="list data sets, models, methods and protocols")
    return parser


def _list() -> None:
    from tgdd.data.registry import dataset_names
    from tgdd.methods import METHODS
    from tgdd.models import model_names
    from tgdd.protocols import PROTOCOLS

    print("datasets: ", ", ".join(dataset_names()))
    print("models:   ", ", ".join(model_names()))
    print("protocols:", ", ".join(PROTOCOLS.names()))
    print("methods:")
    for name in METHODS.names():
        print(f"  {name:<8} {METHODS.get(name).summary}")


def _run(args: argparse.Namespace) -> int:
    if args.step == "list":
        _list()
        return 0
    import yaml

    from tgdd.config import config_dict, load_config

    cfg = load_config(args.config, args.overrides)
    if args.step == "config":
        print(yaml.safe_dump(config_dict(cfg), sort_keys=False), end="")
        return 0
    from tgdd import steps

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    kwargs = {"dry_run": True} if getattr(args, "dry_run", False) else {}
    for path in getattr(steps, args.step)(cfg, **kwargs):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
