"""Variants as an axis of the matrix (matrix.variants): named overrides applied last, in paths,
records, MLflow tags and the report, through tgdd pipeline, real Snakemake and real DVC; changing
one variant's override redoes that variant only. Plus the ablation's switches."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tgdd import paths, steps
from tgdd.config import build_config
from tgdd.errors import TgddError
from tgdd.methods.matching import class_loss
from tgdd.models import build_model
from tgdd.resolve import protocol_settings
from tgdd.synthetic import load_synthetic

from .conftest import tiny_config
from .test_workflow import dvc, job_counts, make_project, rules_run, run, snakemake, tiny_tree

VARIANTS = {"full": {}, "no-sdc": {"distill.tgdd.alpha": 0.0}, "short": {"experts.epochs": 1}}


# --- the config -------------------------------------------------------------------------------------------------


def test_a_variant_applies_its_overrides_last():
    tree = {"matrix": {"variants": VARIANTS}, "per_dataset": {"digits": {"distill": {"tgdd": {"alpha": 3.0}}}}}
    cfg = build_config(tree, ["variant=no-sdc", "distill.tgdd.alpha=7"])
    assert cfg.distill.tgdd.alpha == 0.0 and cfg.variant_overrides == {"distill.tgdd.alpha": 0.0}
    assert build_config(tree, ["distill.tgdd.alpha=7"]).distill.tgdd.alpha == 7  # no variant: as before
    assert cfg.without_variant().distill.tgdd.alpha == 7 and cfg.without_variant().variant is None


@pytest.mark.parametrize(
    ("variants", "override", "message"),
    [
        (VARIANTS, "variant=nope", r"unknown variant 'nope' \(matrix.variants: full, no-sdc, short\)"),
        ({"x": {"distill.tgdd.alpa": 1}}, "variant=x", r"\(with variant x\) unknown config key.*Did you mean 'alpha'"),
        ({"x": {"distill.ipc": 1}}, "seed=0", "variant 'x' may not set 'distill.ipc'"),
        ({"x": {"paths.results": "/tmp"}}, "seed=0", "variant 'x' may not set 'paths.results'"),
        ({"a/b": {}}, "seed=0", "variant name 'a/b' must match"),
    ],
)
def test_bad_variants_are_one_clear_error(variants, override, message):
    with pytest.raises(TgddError, match=message):
        build_config({"matrix": {"variants": variants}}, [override])


def test_paths_carry_the_variant_and_experts_only_where_it_changes_them(tmp_path):
    variants = {**VARIANTS, "same-epochs": {"experts.epochs": 2}}  # the value the cell has anyway
    cfg = tiny_config(tmp_path, "matrix.variants=" + json.dumps(variants))
    base = paths.synthetic_dir(cfg)
    assert paths.synthetic_dir(cfg.with_overrides("variant=no-sdc")) == base / "variant-no-sdc"
    evaluation = paths.evaluation_file(cfg.with_overrides("variant=full"), "a")
    assert evaluation == tmp_path / "results/eval/digits/tgdd/ipc10/seed0/variant-full/a__tgdd.json"
    assert paths.evaluation_file(cfg, "a") == tmp_path / "results/eval/digits/tgdd/ipc10/seed0/a__tgdd.json"
    experts = paths.experts_dir(cfg)
    assert paths.experts_dir(cfg.with_overrides("variant=no-sdc")) == experts
    assert paths.experts_dir(cfg.with_overrides("variant=same-epochs")) == experts
    assert paths.experts_dir(cfg.with_overrides("variant=short")) == experts.parent / "seed0/variant-short"
    cells = steps.matrix_configs(cfg.with_overrides("matrix.methods=[tgdd]", "matrix.ipcs=[1]"))
    assert [c.variant for c in cells] == list(variants)


# --- the ablation's switches ------------------------------------------------------------------------------------


def test_no_augmentation_in_evaluation_is_neither_dsa_nor_cutmix():
    with_aug = protocol_settings(build_config({}, ["dataset=cifar10"]))
    without = protocol_settings(build_config({}, ["dataset=cifar10", "evaluate.augment=none"]))
    assert with_aug.augment == "color_crop_flip_scale_rotate" and with_aug.cutmix_prob == 0.5
    assert (without.augment, without.cutmix_prob) == ("none", 0.0)
    assert without.epochs == with_aug.epochs and without.lr == with_aug.lr  # only the augmentation


def test_alpha_zero_leaves_the_mmd_term_alone():
    """The ablation's '+ L_MMD' row (alpha 0): TGDD's class loss is the squared distance of the
    mean embeddings, computed here directly; the expert's cross-entropy does not enter."""
    torch.manual_seed(0)
    extractor, expert = build_model("convnet-1-w8", 1, 8, 3).eval(), build_model("convnet-1-w8", 1, 8, 3).eval()
    real, syn = torch.rand(6, 1, 8, 8), torch.rand(4, 1, 8, 8)
    loss, *_ = class_loss(extractor, expert, real, syn, 2, 0.0)
    with torch.no_grad():
        direct = (extractor.features(real).flatten(1).mean(0) - extractor.features(syn).flatten(1).mean(0)).square()
    torch.testing.assert_close(loss.detach(), direct.sum())
    full, *_ = class_loss(extractor, expert, real, syn, 2, 2.5)
    ce = torch.nn.functional.cross_entropy(expert(syn), torch.full((4,), 2))
    torch.testing.assert_close(full.detach(), direct.sum() + 2.5 * ce.detach())


def test_no_losses_is_the_initialised_set(prepared_root, tmp_path):
    """The ablation's first rows: TGDD with zero iterations keeps its `mix` start (f = 2)."""
    shutil.copytree(prepared_root / "data", tmp_path / "data")
    cfg = tiny_config(tmp_path, "distill.ipc=1", "distill.iterations=0", "experts.num_trajectories=1")
    steps.experts(cfg)
    syn = load_synthetic(steps.distill(cfg)[0])
    assert syn.meta["settings"]["iterations"] == 0 and syn.factor == 2
    from tgdd.data.prepared import load_prepared

    train = load_prepared(paths.prepared_dir(cfg), "train", "digits")
    first = train.as_float()[train.labels == 0][:4]  # the first f*f images of class 0, downsized, tiled
    tile = torch.nn.functional.interpolate(first, scale_factor=0.5)
    torch.testing.assert_close(syn.images[0, :, :8, :8], tile[0])


# --- three routes -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variant_project(tmp_path_factory):
    """The tiny matrix (TGDD, IPC 1) with three variants, run through real Snakemake, with MLflow
    (sqlite in the project) written by the report, as a git + DVC project."""
    tree = tiny_tree(matrix__methods=["tgdd"], matrix__variants=VARIANTS)
    tree["tracking"] = {"enabled": True, "experiment": "variants", "log_steps": False}
    project = make_project(tmp_path_factory.mktemp("variants") / "project", tree)
    run(["git", "init", "-q"], project)
    dvc("init", "-q", cwd=project)
    dvc("config", "core.analytics", "false", cwd=project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "variants"], project)
    out = dvc("repro", cwd=project, limit=900).stdout
    return project, out


@pytest.mark.slow
def test_variants_through_snakemake_and_dvc(variant_project):
    project, out = variant_project
    counts = {rule: rules_run(out).count(rule) for rule in ("tgdd_trajectory", "tgdd_distill", "tgdd_evaluate")}
    assert counts == {"tgdd_trajectory": 4, "tgdd_distill": 3, "tgdd_evaluate": 3}  # 2 shared + 2 of "short"
    results = project / "results"
    for name in VARIANTS:
        record = json.loads(
            (results / f"eval/digits/tgdd/ipc1/seed0/variant-{name}/convnet-1-w16__tgdd.json").read_text()
        )
        assert record["variant"] == name and record["variant_overrides"] == VARIANTS[name]
        meta = load_synthetic(results / f"synthetic/digits/tgdd/ipc1/seed0/variant-{name}/synthetic.pt").meta
        assert meta["variant"] == name
    no_sdc = load_synthetic(results / "synthetic/digits/tgdd/ipc1/seed0/variant-no-sdc/synthetic.pt").meta
    assert no_sdc["settings"]["tgdd"]["alpha"] == 0.0
    short = torch.load(results / "experts/digits/tgdd/convnet-1-w16/seed0/variant-short/trajectory_00.pt",
                       weights_only=True)  # fmt: skip
    assert len(short["snapshots"]) == 2  # experts.epochs 1: its own trajectories
    assert not (results / "experts/digits/tgdd/convnet-1-w16/seed0/variant-full").exists()  # shared
    summary = pd.read_csv(results / "tables/summary.csv")
    assert sorted(summary["variant"]) == sorted(VARIANTS)
    assert "tgdd [no-sdc]" in (results / "tables/summary.md").read_text()
    runs = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").search_runs(
        [MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_experiment_by_name("variants").experiment_id]
    )
    tagged = {r.data.tags.get("variant") for r in runs if r.data.tags.get("stage") in ("distill", "evaluate")}
    assert tagged == set(VARIANTS)


@pytest.mark.slow
def test_changing_one_variant_redoes_that_variant_only(variant_project):
    project, _ = variant_project
    config_file = project / "config" / "config.yaml"
    tree = yaml.safe_load(config_file.read_text())
    tree["matrix"]["variants"]["no-sdc"] = {"distill.tgdd.alpha": 1.0}
    config_file.write_text(yaml.safe_dump(tree, sort_keys=False))
    # Snakemake: the changed variant's distillation and evaluation, then the report
    dry = snakemake("-n", "--cores", "2", cwd=project).stdout
    assert job_counts(dry) == {"all": 1, "tgdd_distill": 1, "tgdd_evaluate": 1, "tgdd_report": 1}, dry[-2000:]
    assert "variant-no-sdc" in dry and "variant-full/" not in dry.split("Job stats")[0]
    # tgdd pipeline: the same plan from the records in the artifacts
    plan = run(["tgdd", "pipeline", "--config", "config/config.yaml", "--dry-run"], project).stdout
    planned = [line.split(" (")[0] for line in plan.splitlines() if line.startswith("would run")]
    assert planned == [
        "would run: distill digits tgdd ipc1 seed0 variant no-sdc",
        "would run: evaluate digits tgdd ipc1 seed0 variant no-sdc on convnet-1-w16",
        "would run: report",
    ], plan
    # DVC: the stages rerun, and inside them the changed variant's jobs only
    out = dvc("repro", cwd=project, limit=400).stdout
    jobs = [r for r in rules_run(out) if r.startswith("tgdd_")]
    assert sorted(jobs) == ["tgdd_distill", "tgdd_evaluate", "tgdd_report"], out[-3000:]
    meta = load_synthetic(project / "results/synthetic/digits/tgdd/ipc1/seed0/variant-no-sdc/synthetic.pt").meta
    assert meta["settings"]["tgdd"]["alpha"] == 1.0


# --- the report -------------------------------------------------------------------------------------------------


def test_a_sweep_is_one_figure_per_key_with_two_values_or_more(tmp_path):
    from tgdd.report import sweep_figures, swept_values

    def row(variant: str, overrides: dict, mean: float) -> dict:
        return {"dataset": "cifar10", "ipc": 10, "method": "tgdd", "arch": "convnet-3", "protocol": "tgdd",
                "distill_seed": 0, "mean": mean, "std": 0.5, "n_runs": 3, "epochs": 300, "variant": variant,
                "variant_overrides": json.dumps(overrides)}  # fmt: skip

    frame = pd.DataFrame(
        [
            row("alpha-0.5", {"distill.tgdd.alpha": 0.5}, 60.0),
            row("alpha-2.5", {"distill.tgdd.alpha": 2.5}, 62.0),
            row("short", {"experts.epochs": 1}, 50.0),  # one value: no sweep
            row("none", {"distill.iterations": 0, "evaluate.augment": "none"}, 40.0),  # two keys: no sweep
        ]
    )
    points = swept_values(frame)
    assert points[["variant", "swept", "value"]].values.tolist() == [
        ["alpha-0.5", "distill.tgdd.alpha", 0.5],
        ["alpha-2.5", "distill.tgdd.alpha", 2.5],
    ]
    written = sweep_figures(frame, tmp_path)
    assert written == [tmp_path / "sweep_distill_tgdd_alpha.png"] and written[0].stat().st_size > 1000
