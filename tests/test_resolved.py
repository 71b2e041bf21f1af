"""Staleness is decided on RESOLVED settings, in all three routes (issue 12, part 2).

A plugin method (``TGDD_PLUGINS``) takes a default from a file inside the project's ``src/tgdd``,
as a built-in method takes its defaults from its card: changing that file is a code change with no
change to the config. `tgdd pipeline`, Snakemake and `dvc repro` must each redo exactly the steps
the changed default affects, and nothing else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from .test_workflow import BIN, dvc, job_counts, make_project, rules_run, run, snakemake, tiny_tree

pytestmark = pytest.mark.slow

PLUGIN = '''
"""A test method and protocol whose defaults come from a file, like code defaults."""
import json
import os
from pathlib import Path

from pydantic import Field

from tgdd.cards import METHODS
from tgdd.cards.base import MethodCard, MethodSettings
from tgdd.cards.selection import selection_defaults
from tgdd.methods import DistillOutput, implements
from tgdd.protocols import PROTOCOLS, Protocol, TrainSettings

DEFAULTS = json.loads(Path(os.environ["PROBE_DEFAULTS"]).read_text())


class ProbeSettings(MethodSettings):
    scale: float | None = Field(None, description="brightness of the kept images; null: the code's default")

    def resolve(self, ipc, spec):
        return self if self.scale is not None else self.model_copy(update={"scale": DEFAULTS["scale"]})


class Probe:
    def run(self, ctx):
        import torch

        s = ctx.settings
        images = [ctx.sampler.first(c, s.ipc) * s.own["scale"] for c in range(ctx.train.num_classes)]
        return DistillOutput(torch.cat(images))


METHODS.add("probe", MethodCard(module=__name__, needs_trajectories=False, optimizes_images=False,
                                summary="a test method", defaults=selection_defaults, settings=ProbeSettings))
implements("probe", Probe())
train = TrainSettings(DEFAULTS["epochs"], 64, 0.01, 0.9, 5e-4, "idc", 0.2, "none", "idc", 0.0)
PROTOCOLS.add("probe", Protocol("probe", "a test protocol", train, drops_flip=True))
'''


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """The plugin on PYTHONPATH and TGDD_PLUGINS (every route's processes inherit them); returns a
    function that writes a project whose defaults file lives in its src/tgdd."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "probe_plugin.py").write_text(PLUGIN)
    monkeypatch.setenv("PYTHONPATH", str(plugins))
    monkeypatch.setenv("TGDD_PLUGINS", "probe_plugin")

    def project(name: str) -> Path:
        root = make_project(tmp_path / name)
        set_defaults(root, scale=1.0, epochs=2)
        monkeypatch.setenv("PROBE_DEFAULTS", str(defaults_file(root)))
        # The config written out by `tgdd config` with the plugin loaded (this process has not loaded it).
        tree = tiny_tree(matrix__methods=["probe", "random"], evaluate__protocol="probe", evaluate__epochs=None)
        raw = root / "config" / "raw.yaml"
        raw.write_text(yaml.safe_dump(tree))
        resolved = run([str(BIN / "tgdd"), "config", "--config", str(raw)], root).stdout
        (root / "config" / "config.yaml").write_text(resolved)
        raw.unlink()
        return root

    return project


def defaults_file(project: Path) -> Path:
    return project / "src" / "tgdd" / "probe_defaults.json"


def set_defaults(project: Path, **values) -> None:
    path = defaults_file(project)
    current = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**current, **values}))


def mtimes(project: Path, method: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for d in ("synthetic", "eval") for p in (project / "results" / d).rglob(f"*/{method}/**/*.*")}  # fmt: skip


def tgdd(project: Path, *args: str) -> str:
    return run([str(BIN / "tgdd"), *args, "--config", "config/config.yaml"], project).stdout


def test_tgdd_pipeline_redoes_exactly_what_a_changed_default_affects(probe):
    project = probe("pipeline")
    tgdd(project, "pipeline", "-q")
    random_before = mtimes(project, "random")
    set_defaults(project, scale=0.5)
    plan = [line for line in tgdd(project, "pipeline", "-n").splitlines() if line.startswith("would run")]
    assert plan == [
        "would run: distill digits probe ipc1 seed0 (distill.probe.scale (resolved): 1.0 -> 0.5)",
        "would run: evaluate digits probe ipc1 seed0 on convnet-1-w16 (its synthetic set is (re)distilled)",
        "would run: report (always)",
    ]
    tgdd(project, "pipeline", "-q")
    assert mtimes(project, "random") == random_before
    set_defaults(project, epochs=3)
    plan = [line for line in tgdd(project, "pipeline", "-n").splitlines() if line.startswith("would run")]
    assert [line.split(" (")[0] for line in plan] == [
        "would run: evaluate digits probe ipc1 seed0 on convnet-1-w16",
        "would run: evaluate digits random ipc1 seed0 on convnet-1-w16",
        "would run: report",
    ]
    assert "evaluate.protocol_settings.epochs (resolved): 2 -> 3" in plan[0]


def test_snakemake_reruns_exactly_what_a_changed_default_affects(probe):
    project = probe("snakemake")
    snakemake("--cores", "1", cwd=project, limit=400)
    random_before = mtimes(project, "random")
    set_defaults(project, scale=0.5)
    dry = snakemake("-n", "--cores", "1", cwd=project).stdout
    assert job_counts(dry) == {"all": 1, "tgdd_distill": 1, "tgdd_evaluate": 1, "tgdd_report": 1}, dry[-3000:]
    assert re.search(r"rule tgdd_distill:\n(?:    .*\n)*?    wildcards: .*method=probe", dry)
    snakemake("--cores", "1", cwd=project, limit=400)
    assert mtimes(project, "random") == random_before
    set_defaults(project, epochs=3)
    dry = snakemake("-n", "--cores", "1", cwd=project).stdout
    assert job_counts(dry) == {"all": 1, "tgdd_evaluate": 2, "tgdd_report": 1}, dry[-3000:]


def test_dvc_repro_redoes_exactly_what_a_changed_default_affects(probe):
    project = probe("dvc")
    run(["git", "init", "-q"], project)
    dvc("init", "-q", cwd=project)
    dvc("config", "core.analytics", "false", cwd=project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "probe project"], project)
    dvc("repro", cwd=project, limit=400)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "reproduced"], project)
    random_before = mtimes(project, "random")
    set_defaults(project, scale=0.5)  # a change in src/tgdd: DVC runs the stages, Snakemake picks the jobs
    out = dvc("repro", cwd=project, limit=400).stdout
    assert sorted(r for r in rules_run(out) if r.startswith("tgdd_")) == [
        "tgdd_distill",
        "tgdd_evaluate",
        "tgdd_report",
    ]
    assert mtimes(project, "random") == random_before
    synthetic = json.loads(run([str(BIN / "python"), "-c", READ_SCALE], project).stdout)
    assert synthetic == {"probe": 0.5}


READ_SCALE = """
import json
from tgdd.synthetic import load_synthetic_meta
meta = load_synthetic_meta("results/synthetic/digits/probe/ipc1/seed0/synthetic.pt")
print(json.dumps({"probe": meta["settings"]["probe"]["scale"]}))
"""
