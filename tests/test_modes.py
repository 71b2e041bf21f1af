"""Artifacts get the permissions the user's umask gives any new file (0666 less the umask;
directories 0777 less it), so that the people sharing a project directory, a shared DVC cache or
an MLflow server running as another user can read them. Before: every file was written through
`tempfile.mkstemp`, whose 0600 the rename kept. Each test runs under two umasks: the common 022
(readable by all, writable by the owner) and a group's 007 (read-write for the group)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tgdd import steps
from tgdd.artifacts import atomic_write, torch_save, write_json, write_text

from .conftest import tiny_config

UMASKS = [0o022, 0o007]


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def expected(path: Path, mask: int) -> int:
    return (0o777 if path.is_dir() else 0o666) & ~mask


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_every_writer_gives_the_umask_mode(tmp_path: Path, mask: int):
    out = tmp_path / "made" / "by" / "tgdd"
    with umask(mask):
        written = [
            write_json(out / "a.json", {"x": 1}),
            write_text(out / "b.csv", "x\n1\n"),
            torch_save(out / "c.pt", {"x": 1}),
            atomic_write(out / "d.png", lambda tmp: tmp.write_bytes(b"\x89PNG\r\n\x1a\n")),
        ]
    made = [*written, out, out.parent, out.parent.parent]
    assert {p.name: oct(mode(p)) for p in made} == {p.name: oct(expected(p, mask)) for p in made}
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_a_rewrite_replaces_a_read_only_file_with_a_normal_one(tmp_path: Path, mask: int):
    """DVC links its cache's files into place read-only; a rerun's file is a new, normal one."""
    path = tmp_path / "manifest.json"
    path.write_text("{}")
    path.chmod(0o444)
    with umask(mask):
        write_json(path, {"rerun": True})
    assert oct(mode(path)) == oct(0o666 & ~mask)


@pytest.mark.slow
@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_every_artifact_of_a_run_has_the_umask_mode(tmp_path: Path, mask: int):
    """A whole tiny matrix: prepared data, trajectories, synthetic sets, grids, losses,
    evaluations, tables, the class-overlap table and t-SNE figure, and their directories."""
    cfg = tiny_config(tmp_path, "experts.num_trajectories=1", "matrix.methods=[tgdd,random]", "matrix.ipcs=[1]")
    with umask(mask):
        steps.pipeline(cfg)
    made = [cfg.paths.data, cfg.paths.results]
    made += [p for root in (cfg.paths.data, cfg.paths.results) for p in root.rglob("*")]
    names = {p.name for p in made}
    for name in ("train.pt", "trajectory_00.pt", "synthetic.pt", "grid.png", "losses.csv", "manifest.json"):
        assert name in names
    for name in ("summary.csv", "summary.md", "metrics.json", "class_overlap.csv", "tsne_digits_ipc1.png"):
        assert name in names
    assert [p for p in made if p.suffix == ".json" and "eval" in p.parts]
    wrong = {str(p.relative_to(tmp_path)): oct(mode(p)) for p in made if mode(p) != expected(p, mask)}
    assert wrong == {}, f"expected {oct(0o666 & ~mask)} (files) and {oct(0o777 & ~mask)} (directories)"
