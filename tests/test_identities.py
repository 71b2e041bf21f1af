"""Identities follow content, not bytes or clocks: preparing the same files again, or retraining an
expert with the same seed, changes nothing downstream (issue 20); distillation seeds share one set
of experts (``experts.seed``), recorded in every artifact."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from tgdd import paths, steps
from tgdd.artifacts import content_digest, read_json, torch_save, write_record
from tgdd.experts import manifest_digest, trajectory_header
from tgdd.synthetic import load_synthetic_meta

from .conftest import tiny_config
from .test_workflow import job_counts, make_project, snakemake, tiny_tree

MATRIX = ("matrix.methods=[tgdd,random]", "matrix.ipcs=[1]", "matrix.seeds=[0,1]")


def files_state(root: Path) -> dict[str, tuple[str, int]]:
    """(SHA-256, modification time in ns) of every file under ``root``."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def planned(root: Path, *overrides: str) -> list[tuple[str, str]]:
    return [(step, steps.describe(step, cfg)) for step, cfg, _ in steps.plan(tiny_config(root, *MATRIX, *overrides))]


# ---------------------------------------------------------------------------------------------
# Bytes are a function of content
# ---------------------------------------------------------------------------------------------
def test_torch_save_writes_the_same_bytes_for_the_same_object_and_keeps_an_equal_file(tmp_path):
    blob = {"images": torch.arange(12.0).view(3, 4), "labels": torch.tensor([0, 1, 2]), "name": "x"}
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch_save(a, blob)
    torch_save(b, blob)
    assert a.read_bytes() == b.read_bytes()  # torch.save given a name stores it in the zip: not here
    before = a.stat().st_mtime_ns
    torch_save(a, {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in blob.items()})
    assert a.stat().st_mtime_ns == before  # same bytes: the file is left as it was
    torch_save(a, {**blob, "name": "y"})
    assert a.read_bytes() != b.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_content_digest_is_the_hash_of_dtype_shape_and_bytes_in_key_order():
    t = torch.tensor([1.0, 2.0])
    direct = hashlib.sha256()
    direct.update(b"{")
    direct.update(b'"a"')
    direct.update(f"T{t.dtype}{tuple(t.shape)}".encode() + t.numpy().tobytes())
    direct.update(b'"b"')
    direct.update(b"3")
    direct.update(b"}")
    assert content_digest({"b": 3, "a": t}) == direct.hexdigest()
    assert content_digest({"a": t.double(), "b": 3}) != direct.hexdigest()  # the dtype counts
    assert content_digest({"a": t.view(2, 1), "b": 3}) != direct.hexdigest()  # the shape counts


def test_a_record_is_rewritten_only_when_its_content_changes(tmp_path):
    path = tmp_path / "manifest.json"
    write_record(path, {"files": {"a": 1}, "created": "monday", "code": {"git_commit": "x"}})
    before = path.stat().st_mtime_ns
    write_record(path, {"files": {"a": 1}, "created": "tuesday", "code": {"git_commit": "y"}})
    assert path.stat().st_mtime_ns == before and json.loads(path.read_text())["created"] == "monday"
    write_record(path, {"files": {"a": 2}, "created": "tuesday"})
    assert json.loads(path.read_text())["files"] == {"a": 2}


def test_preparing_the_same_files_again_changes_no_byte_and_no_time(prepared_root, tmp_path):
    root = Path(shutil.copytree(prepared_root, tmp_path / "copy"))
    before = files_state(root / "data" / "prepared")
    steps.prepare(tiny_config(root))
    assert files_state(root / "data" / "prepared") == before


# ---------------------------------------------------------------------------------------------
# Through `tgdd pipeline`: two distillation seeds, one set of experts
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def done(prepared_root, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("identities")
    shutil.copytree(prepared_root / "data", root / "data")
    steps.pipeline(tiny_config(root, *MATRIX))
    return root


def cell(root: Path, method: str, seed: int, *more: str):
    return tiny_config(root, *MATRIX, f"distill.method={method}", "distill.ipc=1", f"seed={seed}", *more)


def test_distillation_seeds_share_one_set_of_experts_recorded_everywhere(done):
    assert sorted(p.name for p in (done / "results" / "experts" / "digits" / "tgdd" / "convnet-1-w16").iterdir()) == [
        "seed0"
    ]
    manifest = read_json(paths.experts_dir(cell(done, "tgdd", 1)) / "manifest.json")
    assert manifest["seed"] == 0
    for seed in (0, 1):
        inputs = load_synthetic_meta(paths.synthetic_file(cell(done, "tgdd", seed)))["inputs"]
        assert inputs["experts_seed"] == 0
        assert inputs["trajectories_sha256"] == manifest["trajectories_sha256"] == manifest_digest(manifest, 2)
        result = read_json(paths.evaluation_file(cell(done, "tgdd", seed), "convnet-1-w16"))
        assert (result["experts_seed"], result["distill_seed"]) == (0, seed)
        random = read_json(paths.evaluation_file(cell(done, "random", seed), "convnet-1-w16"))
        assert random["experts_seed"] is None  # made without trajectories
    for index in (0, 1):
        header = trajectory_header(paths.trajectory_file(cell(done, "tgdd", 0), index))
        assert header["identity"]["seed"] == 0
    # The two seeds distilled different sets from the same experts.
    a, b = (load_synthetic_meta(paths.synthetic_file(cell(done, "tgdd", s)))["seed"] for s in (0, 1))
    assert (a, b) == (0, 1)


def test_experts_seed_null_gives_each_seed_its_own_experts(done):
    plan = planned(done, "experts.seed=null")
    experts = [what for step, what in plan if step == "experts"]
    assert experts == ["experts digits tgdd convnet-1-w16 seed1"]  # seed 0's experts are those trained


def test_preparing_again_and_retraining_an_expert_leave_every_identity(done, tmp_path):
    root = Path(shutil.copytree(done, tmp_path / "copy"))
    assert planned(root) == [("report", "report")]
    steps.prepare(tiny_config(root))
    assert planned(root) == [("report", "report")]

    # An expert lost and retrained with the same seed: other file bytes (provenance), same content.
    cfg = cell(root, "tgdd", 0)
    trajectory = paths.trajectory_file(cfg, 1)
    content = trajectory_header(trajectory)["content_sha256"]
    trajectory.unlink()
    synthetic = files_state(root / "results" / "synthetic")
    steps.pipeline(tiny_config(root, *MATRIX))  # retrains it, then finds nothing else to redo
    assert trajectory_header(trajectory)["content_sha256"] == content
    assert files_state(root / "results" / "synthetic") == synthetic
    assert planned(root) == [("report", "report")]
    steps.evaluate(cfg)  # the synthetic set is not refused: its trajectories are the same


def test_a_changed_trajectory_is_noticed(done, tmp_path):
    root = Path(shutil.copytree(done, tmp_path / "copy"))
    cfg = cell(root, "tgdd", 0)
    path = paths.trajectory_file(cfg, 0)
    blob = torch.load(path, weights_only=True)
    blob["snapshots"][-1] = {k: v + 1 for k, v in blob["snapshots"][-1].items()}
    blob["content_sha256"] = content_digest({"identity": blob["identity"], "snapshots": blob["snapshots"]})
    torch_save(path, blob)
    steps.experts(cfg, gather=True)
    plan = planned(root)
    assert ("distill", "distill digits tgdd ipc1 seed0") in plan and (
        "distill",
        "distill digits tgdd ipc1 seed1",
    ) in plan


# ---------------------------------------------------------------------------------------------
# Through Snakemake: one trajectory job per expert, whatever the number of seeds
# ---------------------------------------------------------------------------------------------
def test_snakemake_plans_the_experts_once_for_two_seeds(tmp_path):
    project = make_project(tmp_path / "project", tiny_tree(matrix__seeds=[0, 1]))
    counts = job_counts(snakemake("-n", "--cores", "1", cwd=project).stdout)
    assert counts["tgdd_trajectory"] == 2 and counts["tgdd_experts"] == 1
    assert counts["tgdd_distill"] == 4  # (tgdd, random) x 2 seeds
    project = make_project(tmp_path / "own", tiny_tree(matrix__seeds=[0, 1], experts__seed=None))
    counts = job_counts(snakemake("-n", "--cores", "1", cwd=project).stdout)
    assert counts["tgdd_trajectory"] == 4 and counts["tgdd_experts"] == 2


def test_trajectories_of_an_older_tgdd_are_gathered_with_their_content_digest(done, tmp_path):
    """A finished trajectory written before files carried a content digest is gathered, not retrained:
    its digest is computed from its snapshots, the same as a new file records."""
    root = Path(shutil.copytree(done, tmp_path / "copy"))
    cfg = cell(root, "tgdd", 0)
    manifest = paths.experts_dir(cfg) / "manifest.json"
    before = read_json(manifest)["trajectories_sha256"]
    path = paths.trajectory_file(cfg, 0)
    blob = torch.load(path, weights_only=True)
    del blob["content_sha256"]
    torch_save(path, blob)
    assert trajectory_header(path)["content_sha256"] is None
    steps.experts(cfg, gather=True)
    assert read_json(manifest)["trajectories_sha256"] == before
