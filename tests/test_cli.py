"""The `tgdd` command line as the README writes it: each step takes its options, files and
``key=value`` overrides in any order, and ``-q`` leaves warnings and errors only (no progress bars)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import tqdm.std
import yaml

from tgdd import paths
from tgdd.cli import main, parse_args
from tgdd.config import load_config
from tgdd.data.prepared import load_prepared
from tgdd.synthetic import load_synthetic

from .conftest import TINY

TGDD = Path(sys.executable).parent / "tgdd"
# What a tqdm bar writes (carriage returns, the rate, the bar's edge); none of it is in a log line.
PROGRESS_BAR = re.compile(r"\r|it/s|s/it|\d+%\|")


def _same(argvs: list[list[str]]) -> dict:
    """Every argument order parses into the same namespace: return it."""
    parsed = [vars(parse_args(argv)) for argv in argvs]
    assert all(p == parsed[0] for p in parsed), parsed
    return parsed[0]


def test_import_takes_options_files_and_overrides_in_any_order():
    """The README's order (options after the file, overrides last) failed with 'unrecognized arguments'."""
    readme = ["--format", "dc", "res.pt", "--name", "x", "--config", "C", "dataset=fashion_mnist"]
    args = _same(
        [
            ["import-synthetic", *readme],
            ["import-synthetic", "--format", "dc", "--name", "x", "--config", "C", "res.pt", "dataset=fashion_mnist"],
            ["import-synthetic", "res.pt", "dataset=fashion_mnist", "--format", "dc", "--name", "x", "--config", "C"],
            ["import-synthetic", "--config", "C", "res.pt", "--format", "dc", "dataset=fashion_mnist", "--name", "x"],
        ]
    )
    assert args["items"] == ["res.pt", "dataset=fashion_mnist"] and args["name"] == "x" and args["format"] == "dc"
    pair = _same(
        [
            ["import-synthetic", "--format", "mtt", "images.pt", "labels.pt", "--no-zca", "--config", "C", "seed=1"],
            ["import-synthetic", "images.pt", "--no-zca", "labels.pt", "seed=1", "--format", "mtt", "--config", "C"],
        ]
    )
    assert pair["items"] == ["images.pt", "labels.pt", "seed=1"] and pair["no_zca"]


@pytest.mark.parametrize(
    "step, options",
    [
        ("distill", ["--config", "C", "-q"]),
        ("config", ["--config", "C"]),
        ("pipeline", ["--config", "C", "-n"]),
        ("experts", ["--index", "1", "--recipe", "mtt", "--config", "C"]),
        ("export-synthetic", ["--format", "mtt", "--config", "C", "--out", "o"]),
    ],
)
def test_every_step_takes_overrides_before_between_and_after_options(step, options):
    overrides = ["dataset=digits", "distill.ipc=10"]
    args = _same(
        [
            [step, *options, *overrides],
            [step, *overrides, *options],
            [step, overrides[0], *options, overrides[1]],
            [step, *options[:2], *overrides, *options[2:]],
        ]
    )
    assert args["overrides"] == overrides and args["config"] == Path("C")


def test_unknown_options_and_steps_are_still_refused(capsys):
    for argv in (["distill", "--confg", "C"], ["distil"], ["experts", "--index", "1", "--gather"]):
        with pytest.raises(SystemExit) as exit_:
            parse_args(argv)
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --confg" in err and "invalid choice: 'distil'" in err
    assert "not allowed with argument --index" in err


def _tiny_config(root: Path, **sections) -> Path:
    tree = {**TINY, "paths": {"data": str(root / "data"), "results": str(root / "results")}, **sections}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_readme_order_imports_a_set(tmp_path, prepared_root):
    """`tgdd import-synthetic --format dc FILE --name x --config C key=value` as the README writes it."""
    shutil.copytree(prepared_root / "data", tmp_path / "data")
    config = _tiny_config(tmp_path)
    cfg = load_config(config, ["seed=3"])
    train = load_prepared(paths.prepared_dir(cfg), "train", "digits")
    idx = torch.cat([torch.nonzero(train.labels == c).flatten()[:1] for c in range(10)])
    manifest = json.loads((paths.prepared_dir(cfg) / "manifest.json").read_text())
    mean, std = (torch.tensor(manifest[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    res = tmp_path / "res_DM_digits_ConvNet_1ipc.pt"
    torch.save({"data": [[(train.images[idx].float() / 255 - mean) / std, torch.arange(10)]]}, res)  # DM's layout

    argv = ["import-synthetic", "--format", "dc", str(res), "--name", "x", "--config", str(config), "seed=3"]
    init = tqdm.std.tqdm.__dict__["__init__"]
    assert main([*argv, "-q"]) == 0
    assert tqdm.std.tqdm.__dict__["__init__"] is init  # -q silenced the bars of that step only, not of this process
    syn = load_synthetic(paths.synthetic_file(cfg.with_overrides("distill.method=imported-x", "distill.ipc=1")))
    assert syn.meta["method"] == "imported-x" and syn.meta["seed"] == 3 and syn.images.shape[0] == 10


def _tgdd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        ["timeout", "300", str(TGDD), *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )


@pytest.mark.slow
def test_quiet_prints_no_progress_bars(tmp_path, prepared_root):
    """`-q`: a whole pipeline (expert training, distillation, evaluation, report) writes no progress
    bar to stderr; the same capture without `-q` shows the bars (so the check can see them)."""
    quiet, loud = tmp_path / "quiet", tmp_path / "loud"
    for root in (quiet, loud):
        shutil.copytree(prepared_root / "data", root / "data")
    tiny = {"experts": {**TINY["experts"], "num_trajectories": 1}, "distill": {"iterations": 2}}
    tiny |= {"evaluate": {**TINY["evaluate"], "runs": 1}, "matrix": {"methods": ["tgdd"], "ipcs": [1]}}
    proc = _tgdd("pipeline", "--config", str(_tiny_config(quiet, **tiny)), "-q", cwd=quiet)
    assert list((quiet / "results" / "eval").rglob("*.json")), proc.stdout
    assert not PROGRESS_BAR.search(proc.stderr), proc.stderr[:2000]
    shown = _tgdd("experts", "--config", str(_tiny_config(loud, **tiny)), cwd=loud)
    assert PROGRESS_BAR.search(shown.stderr), shown.stderr[:2000]
