# Shared by the other workflow files: the tgdd config this run uses, the experiment matrix, the
# artifact paths (all from tgdd.paths, the one source of truth) and the resource rules.
#
# The workflow has no settings of its own: everything comes from ONE tgdd config file (the
# `configfile:` default or the last --configfile), which every rule passes to the `tgdd` CLI
# with the job's wildcards as key=value overrides. Cluster settings (partition, account)
# live in the profiles (slurm/, slurm-ci/), never in the config, whose keys tgdd validates strictly.

import json
import math
import re
import shlex
import sys
from functools import lru_cache
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

from tgdd.plugins import load_plugins, plugin_modules

load_plugins()  # TGDD_PLUGINS, before tgdd.config is imported: a plugin's card adds a section to its schema

from tgdd import paths
from tgdd.cards import METHODS
from tgdd.config import load_config, section_settings
from tgdd.data.registry import get_dataset
from tgdd.errors import TgddError
from tgdd.protocols import PROTOCOLS
from tgdd.resolve import (
    EXPERT_RECIPES,
    check_cells,
    checks_config,
    num_trajectories,
    resolved_distill,
    resolved_evaluation,
    resolved_experts,
)

# ---------------------------------------------------------------------------------------------
# The config file.
# `workflow.overwrite_configfiles` holds the --configfile arguments (absolute paths; also what
# SLURM jobs receive); without one, the `configfile:` default of the Snakefile applies.
# Snakemake merges every config it loads, tgdd reads exactly one file: so accept exactly one
# and refuse --config key=value, which tgdd would never see.
# ---------------------------------------------------------------------------------------------
DEFAULT_CONFIGFILE = "config/config.yaml"

if len(workflow.overwrite_configfiles) > 1:
    raise WorkflowError(
        "tgdd reads one config file: pass a single --configfile "
        f"(got {', '.join(map(str, workflow.overwrite_configfiles))})"
    )
if workflow.config_settings.config:
    raise WorkflowError(
        "--config key=value is not passed to tgdd: put the settings into a config file and use "
        "--configfile FILE (`tgdd config --config FILE key=value ...` prints a resolved one)"
    )
CONFIGFILE = str(workflow.overwrite_configfiles[-1] if workflow.overwrite_configfiles else DEFAULT_CONFIGFILE)


# The full check by tgdd itself first (names of data sets, models, methods; per_dataset): a typo gets
# the CLI's one line with a suggestion ("unknown config key 'distill.ipcs' (distill). Did you mean
# 'ipc'?"), where the schema's check below would print the whole schema ...
def _load(overrides=()):
    try:
        return load_config(Path(CONFIGFILE), list(overrides))
    except TgddError as exc:
        raise WorkflowError(f"{CONFIGFILE} {' '.join(overrides)}".rstrip() + f": {exc}") from None


BASE = _load()

# ... then the structural check against the schema generated from tgdd.config.Config (the committed one;
# with TGDD_PLUGINS, whose methods add settings sections, the live one, written next to Snakemake's state):
# what tgdd accepted passes it, unless the committed schema is stale (tests/test_workflow.py checks that).
SCHEMA = "../schemas/config.schema.json"
if plugin_modules():
    from tgdd.config import Config

    live_schema = Path(".snakemake") / "tgdd-config.schema.json"
    live_schema.parent.mkdir(exist_ok=True)
    live_schema.write_text(
        json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema()})
    )
    SCHEMA = str(live_schema.resolve())
validate(yaml.safe_load(Path(CONFIGFILE).read_text()) or {}, SCHEMA)


# ---------------------------------------------------------------------------------------------
# One job = one cell of the matrix = one Config: the config file plus the job's wildcards as
# overrides, built exactly as `tgdd STEP --config FILE overrides` builds it (per_dataset
# included). Every wildcard name stands for one config key.
# ---------------------------------------------------------------------------------------------
WILDCARD_KEYS = {  # wildcard -> config key, in the order the overrides are passed
    "dataset": "dataset",
    "seed": "seed",
    "experts_seed": "experts.seed",
    "experts_arch": "experts.arch",
    "method": "distill.method",
    "ipc": "distill.ipc",
    "protocol": "evaluate.protocol",
    "arch": "evaluate.archs",
    "variant": "variant",  # the path suffix of a variant (tgdd.paths.variant_suffix), empty for none
    "experts_variant": "variant",  # the same, in the experts' paths (only variants that set experts keys)
}
VARIANT_PREFIX = paths.VARIANT_PREFIX


def overrides(**wildcards):
    items = []
    for name, key in WILDCARD_KEYS.items():
        if name in wildcards:
            value = wildcards[name]
            if name in ("variant", "experts_variant"):
                if value:
                    items.append(f"{key}={value.removeprefix(VARIANT_PREFIX)}")
                continue
            items.append(f"{key}=[{value}]" if name == "arch" else f"{key}={value}")
    return tuple(items)


@lru_cache(maxsize=None)
def _cell(items):
    return _load(items)


def cell(**wildcards):
    """The Config of one job (also accepts a Snakemake wildcards object's items)."""
    return _cell(overrides(**{k: str(v) for k, v in wildcards.items()}))


def job_config(wildcards):
    return cell(**dict(wildcards.items()))


def shell_overrides(wildcards):
    """The overrides of a job, shell-quoted, for the `tgdd` command line."""
    return " ".join(shlex.quote(item) for item in overrides(**dict(wildcards.items())))


def dataset_config(dataset):
    return cell(dataset=dataset)


# The matrix, data set by data set (per_dataset may give each its own methods, IPCs, archs).
DATASETS = list(BASE.matrix.datasets)


def variant_suffixes(dataset):
    """The variant path suffixes of a data set's matrix ("" alone without matrix.variants)."""
    return [f"{VARIANT_PREFIX}{v}" for v in dataset_config(dataset).matrix.variants] or [""]


CELLS = [  # (dataset, seed, method, ipc, variant suffix)
    (d, s, m, i, v)
    for d in DATASETS
    for s in dataset_config(d).matrix.seeds
    for m in dataset_config(d).matrix.methods
    for i in dataset_config(d).matrix.ipcs
    for v in variant_suffixes(d)
]
try:  # settings that cannot work with the config (MTT: trajectories too short) stop every route here
    check_cells(cell(dataset=d, seed=s, method=m, ipc=i, variant=v) for d, s, m, i, v in CELLS if checks_config(m))
except TgddError as exc:
    raise WorkflowError(str(exc)) from None


def needs_trajectories(method):
    return METHODS.get(method).needs_trajectories


def recipe_of(method):
    return METHODS.get(method).expert_recipe


def _alternatives(names):
    return "|".join(sorted({re.escape(str(n)) for n in names}))


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    seed=r"\d+",
    experts_seed=r"\d+",
    experts_arch=_alternatives(dataset_config(d).experts.arch for d in DATASETS),
    method=_alternatives(m for _, _, m, _, _ in CELLS),
    ipc=r"\d+",
    protocol=_alternatives(PROTOCOLS.names()),
    arch=_alternatives(a for d in DATASETS for a in dataset_config(d).evaluate.archs),
    index=r"\d\d",
    recipe=_alternatives(EXPERT_RECIPES.names()),
    variant=f"({_alternatives(v for *_, v in CELLS if v)})?" if any(v for *_, v in CELLS) else "()",
    experts_variant=f"({_alternatives(v for *_, v in CELLS if v)})?" if any(v for *_, v in CELLS) else "()",


# ---------------------------------------------------------------------------------------------
# The tgdd command: the one installed next to the Python that runs Snakemake (and imported
# tgdd above), so the workflow and the CLI are the same code even without an activated venv;
# with `--sdm conda`, the one of the rules' environment (workflow/envs/tgdd.yaml).
# The command and the config file reach the shell commands as params (`snakemake --lint`), as
# Path objects: Snakemake's params rerun trigger records only params of builtin types, so another
# spelling of the config file's name (relative, absolute, the config/quick.yaml link) or another
# installation reruns nothing. What a job computes is in its section params and its overrides.
# ---------------------------------------------------------------------------------------------
_tgdd_next_to_python = Path(sys.executable).with_name("tgdd")
_conda = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
TGDD = _tgdd_next_to_python if _tgdd_next_to_python.is_file() and not _conda else Path("tgdd")
TGDD_CONFIG = Path(CONFIGFILE)


# ---------------------------------------------------------------------------------------------
# Paths. Rule outputs need wildcard patterns: tgdd.paths applied to a copy of the config whose
# wildcard fields hold "{dataset}", "{method}", ... (model_copy skips validation). Inputs and
# targets are computed from the real Config of each job and checked against the patterns, so
# a change in tgdd.paths cannot make the workflow and the CLI disagree silently.
# ---------------------------------------------------------------------------------------------
_P = BASE.model_copy(
    update={
        "dataset": "{dataset}",
        "seed": "{seed}",
        "variant": "{variant}",
        "experts": BASE.experts.model_copy(update={"arch": "{experts_arch}", "seed": "{experts_seed}"}),
        "distill": BASE.distill.model_copy(update={"method": "{method}", "ipc": "{ipc}"}),
        "evaluate": BASE.evaluate.model_copy(update={"protocol": "{protocol}"}),
    }
)


def variant_pattern(path, wildcard="variant"):
    """A tgdd.paths path of _P as a pattern: its variant suffix one (possibly empty) wildcard."""
    return str(path).replace(f"{VARIANT_PREFIX}{{variant}}", f"{{{wildcard}}}")


PREPARED_DIR = str(paths.prepared_dir(_P))
# the experts' paths end with the variant suffix of variants that change the experts (else "")
EXPERTS_DIR = f"{paths.experts_dir(_P.model_copy(update={'variant': None}), '{recipe}')}{{experts_variant}}"
TRAJECTORY = f"{EXPERTS_DIR}/trajectory_{{index}}.pt"
SYNTHETIC_DIR = variant_pattern(paths.synthetic_dir(_P))
SYNTHETIC = variant_pattern(paths.synthetic_file(_P))
EVALUATION = variant_pattern(paths.evaluation_file(_P, "{arch}"))
TABLES_DIR = str(paths.tables_dir(BASE))
TABLES = {
    name: f"{TABLES_DIR}/{name}" for name in ("summary.csv", "summary.md", "published_comparison.md", "metrics.json")
}
CLASS_OVERLAP = str(paths.class_overlap_file(BASE))


def _checked(pattern, actual, **wildcards):
    expected = pattern.format(**wildcards)
    if expected != str(actual):
        raise WorkflowError(
            f"workflow path {expected} differs from tgdd.paths ({actual}): fix workflow/rules/common.smk"
        )
    return expected


def prepared_manifest(cfg):
    return _checked(f"{PREPARED_DIR}/manifest.json", paths.prepared_dir(cfg) / "manifest.json", dataset=cfg.dataset)


def trajectory_files(cfg, recipe):
    """Every trajectory of a recipe for a (data set, arch, seed): one job each."""
    return [
        _checked(
            TRAJECTORY,
            paths.trajectory_file(cfg, i, recipe),
            dataset=cfg.dataset,
            experts_seed=cfg.experts_seed,
            experts_arch=cfg.experts.arch,
            experts_variant=paths.experts_variant_suffix(cfg),
            recipe=recipe,
            index=f"{i:02d}",
        )
        for i in range(num_trajectories(cfg, recipe))
    ]


def gather_inputs(wildcards):
    return {
        "prepared": prepared_manifest(job_config(wildcards)),
        "trajectories": trajectory_files(job_config(wildcards), wildcards.recipe),
    }


def experts_manifest(cfg, recipe):
    return _checked(
        f"{EXPERTS_DIR}/manifest.json",
        paths.experts_dir(cfg, recipe) / "manifest.json",
        dataset=cfg.dataset,
        experts_seed=cfg.experts_seed,
        experts_arch=cfg.experts.arch,
        experts_variant=paths.experts_variant_suffix(cfg),
        recipe=recipe,
    )


def synthetic_file(cfg):
    d = cfg.distill
    return _checked(
        SYNTHETIC,
        paths.synthetic_file(cfg),
        dataset=cfg.dataset,
        seed=cfg.seed,
        method=d.method,
        ipc=d.ipc,
        variant=paths.variant_suffix(cfg),
    )


def evaluation_file(cfg, arch):
    d = cfg.distill
    return _checked(
        EVALUATION,
        paths.evaluation_file(cfg, arch),
        dataset=cfg.dataset,
        seed=cfg.seed,
        method=d.method,
        ipc=d.ipc,
        protocol=cfg.evaluate.protocol,
        arch=arch,
        variant=paths.variant_suffix(cfg),
    )


# Inputs of a job, from its real Config.
def distill_inputs(wildcards):
    """The prepared data, plus the expert trajectories for methods that match them."""
    cfg = job_config(wildcards)
    inputs = {"prepared": prepared_manifest(cfg)}
    if needs_trajectories(cfg.distill.method):
        inputs["experts"] = experts_manifest(cfg, recipe_of(cfg.distill.method))
    return inputs


def evaluate_inputs(wildcards):
    cfg = job_config(wildcards)
    return {"synthetic": synthetic_file(cfg), "prepared": prepared_manifest(cfg)}


# Targets.
def prepared_targets():
    return [prepared_manifest(dataset_config(d)) for d in DATASETS]


def expert_targets():
    return list(
        dict.fromkeys(
            experts_manifest(cell(dataset=d, seed=s, variant=v), recipe_of(m))
            for d, s, m, _, v in CELLS
            if needs_trajectories(m)
        )
    )


def distill_targets():
    return [synthetic_file(cell(dataset=d, seed=s, method=m, ipc=i, variant=v)) for d, s, m, i, v in CELLS]


def evaluation_targets():
    targets = []
    for d, s, m, i, v in CELLS:
        for arch in cell(dataset=d, seed=s, method=m, ipc=i, variant=v).evaluate.archs:
            targets.append(evaluation_file(cell(dataset=d, seed=s, method=m, ipc=i, variant=v, arch=arch), arch))
    return targets


def analyzed(dataset):
    """Whether `tgdd report` analyses the class overlap of a data set of the matrix: it embeds the
    synthetic sets of the config's seed with that seed's trajectories (tgdd.analysis), which the
    matrix trains when the seed is one of its seeds and one of its methods needs them."""
    cfg = dataset_config(dataset)
    return cfg.seed in cfg.matrix.seeds and any(needs_trajectories(m) for m in cfg.matrix.methods)


def tsne_figures():
    """The t-SNE figures `tgdd report` writes: one per analysed data set and IPC."""
    return list(
        dict.fromkeys(
            str(paths.tsne_figure(dataset_config(d), ipc))
            for d in DATASETS
            if analyzed(d)
            for ipc in dataset_config(d).matrix.ipcs
        )
    )


def report_targets():
    _checked(TABLES["summary.csv"], paths.tables_dir(BASE) / "summary.csv")
    return [*TABLES.values(), CLASS_OVERLAP, *tsne_figures()]


# ---------------------------------------------------------------------------------------------
# Rerun triggers: each rule declares the config section its step reads as `params` (those of
# the job's own Config, per_dataset applied), so Snakemake's default `params` rerun trigger
# redoes exactly the jobs whose settings changed in the config file. The keys a wildcard sets
# are left out (they are in the paths already). `tgdd pipeline` applies the same rule to the
# records in the artifacts (tgdd.freshness).
# ---------------------------------------------------------------------------------------------
def section(name, *drop):
    """A config section as written (for sections without method- or code-dependent defaults: data)."""

    def value(wildcards):
        return json.dumps(section_settings(job_config(wildcards), name, *drop), sort_keys=True)

    return value


def resolved(step):
    """The settings the step of a job runs with, RESOLVED (null = the method's or protocol's
    default, from the code): a default changed in the code reruns the jobs it affects."""
    compute = {
        "experts": lambda cfg, wildcards: resolved_experts(cfg, wildcards.recipe),
        "distill": lambda cfg, _: resolved_distill(cfg),
        "evaluate": lambda cfg, _: resolved_evaluation(cfg),
    }[step]

    def value(wildcards):
        return json.dumps(compute(job_config(wildcards), wildcards), sort_keys=True)

    return value


# ---------------------------------------------------------------------------------------------
# Resources. Threads: the config's torch threads (Snakemake caps them at --cores, and each rule
# hands the granted number back to tgdd as threads=N; on SLURM they are --cpus-per-task).
# Runtime and memory of every job come from its cell's counted work (tgdd.cost: FLOPs and steps of
# its method, IPC, network and data set; the prepared data and expert snapshots it holds) at the
# rate measured on an H200, scaled by TGDD_GPU_TFLOPS, doubled for safety; each retry asks for half
# the estimate more, never beyond TGDD_MAX_RUNTIME_MIN / TGDD_MAX_MEM_MB (the caps the user sets
# once, in the shell that runs Snakemake). A job whose estimate exceeds a cap stops the planning
# with one line naming it (workflow/README.md, "Job resources").
# GPUs: the steps that train networks take one each. On SLURM the executor plugin turns `gpu`
# into --gpus (a profile's set-resources may refine it, e.g. gpu_model; the CPU-only rules go to
# TGDD_SLURM_CPU_PARTITION there); locally `--resources gpu=N` runs at most N of them at once.
# ---------------------------------------------------------------------------------------------
import os

from tgdd.cost import Limits
from tgdd.cost import request as cost_request


def threads_for(wildcards):
    return dataset_config(wildcards.dataset).threads or 1


try:
    LIMITS = Limits.from_env(os.environ)
except TgddError as exc:
    raise WorkflowError(str(exc)) from None

GPUS = {"prepare": 0, "experts": 1, "gather": 0, "distill": 1, "evaluate": 1, "report": 0}
# The small CPU job: the gather (it checksums the trajectory files); the report is sized in report.smk.
BASE_RUNTIME_MIN = {"gather": 10}
BASE_MEM_MB = {"gather": 2000}


@lru_cache(maxsize=None)
def _request(step, items, recipe):
    cfg = _cell(items)
    try:
        return cost_request(cfg, step, LIMITS, recipe=recipe, gpu=GPUS[step] > 0, threads=cfg.threads or 1)
    except TgddError as exc:
        raise WorkflowError(str(exc)) from None


def job_request(step, wildcards):
    """The tgdd.cost request of one job (prepare, experts = one trajectory, distill, evaluate)."""
    items = dict(wildcards.items())
    return _request(step, overrides(**{k: str(v) for k, v in items.items()}), items.get("recipe"))


def runtime_min(step):
    return lambda wildcards, attempt: job_request(step, wildcards).attempt(attempt, LIMITS)[0]


def mem_mb(step):
    return lambda wildcards, attempt: job_request(step, wildcards).attempt(attempt, LIMITS)[1]


def capped_runtime(step):
    """A small job's fixed runtime, growing with retries like the others, within the cap."""
    return lambda wildcards, attempt: min(LIMITS.max_runtime_min, BASE_RUNTIME_MIN[step] * attempt)


def capped_mem(step):
    return lambda wildcards, attempt: min(LIMITS.max_mem_mb, BASE_MEM_MB[step] * attempt)


# ---------------------------------------------------------------------------------------------
# Continual learning (workflow/rules/continual.smk): targets, inputs, resources and rerun trigger.
# ---------------------------------------------------------------------------------------------
from tgdd.resolve import check_continual, resolved_continual
from tgdd.report_continual import figure_file as continual_figure_file

_PC = _P.model_copy(update={"continual": BASE.continual.model_copy(update={"arch": "{continual_arch}"})})
CONTINUAL = variant_pattern(paths.continual_file(_PC, "{steps}"))


def continual_config(wildcards):
    """The Config of one continual job: its cell, its step count and network."""
    items = dict(wildcards.items())
    steps, arch = items.pop("steps"), items.pop("continual_arch")
    return cell(**items).with_overrides(f"continual.steps=[{steps}]", f"continual.arch={arch}")


def continual_file(cfg, steps):
    d = cfg.distill
    return _checked(
        CONTINUAL,
        paths.continual_file(cfg, steps),
        dataset=cfg.dataset,
        seed=cfg.seed,
        method=d.method,
        ipc=d.ipc,
        variant=paths.variant_suffix(cfg),
        continual_arch=cfg.continual.arch,
        steps=steps,
    )


def continual_cells():
    """The cells of the matrix whose config asks for the class-incremental evaluation."""
    found = []
    for d, s, m, i, v in CELLS:
        cfg = cell(dataset=d, seed=s, method=m, ipc=i, variant=v)
        if cfg.continual.enabled:
            found.append(cfg)
    return found


try:  # step counts that do not split the classes stop the planning here
    for _cfg in continual_cells():
        check_continual(_cfg)
except TgddError as exc:
    raise WorkflowError(str(exc)) from None


def continual_targets():
    return [continual_file(cfg, n) for cfg in continual_cells() for n in cfg.continual.steps]


def continual_tables():
    """What `tgdd report` writes of them: the table, its CSV and one figure per data set, IPC and step count."""
    cells = continual_cells()
    if not cells:
        return []
    figures = dict.fromkeys(
        str(continual_figure_file(paths.tables_dir(BASE), c.dataset, c.distill.ipc, n))
        for c in cells
        for n in c.continual.steps
    )
    return [f"{TABLES_DIR}/continual.csv", f"{TABLES_DIR}/continual.md", *figures]


@lru_cache(maxsize=None)
def _continual_request(items, steps):
    """Sized as the evaluation of orders x runs x steps networks on the whole decoded set (each step
    trains on a part of it: an over-estimate of at most about two), one after another."""
    cfg = _cell(items)
    c = cfg.continual
    epochs = "null" if c.epochs is None else c.epochs
    as_evaluation = cfg.with_overrides(
        f"evaluate.protocol={c.protocol}",
        f"evaluate.epochs={epochs}",
        f"evaluate.archs=[{c.arch}]",
        f"evaluate.runs={c.orders * c.runs * int(steps)}",
    )
    try:
        return cost_request(as_evaluation, "evaluate", LIMITS, gpu=True, threads=cfg.threads or 1)
    except TgddError as exc:
        raise WorkflowError(f"tgdd continual in {steps} steps: {exc}") from None


def continual_request(wildcards):
    items = dict(wildcards.items())
    steps = items.pop("steps")
    items.pop("continual_arch")
    return _continual_request(overrides(**{k: str(v) for k, v in items.items()}), steps)


def continual_resolved(wildcards):
    """The rerun trigger: the resolved settings of the job (tgdd.resolve.resolved_continual)."""
    return json.dumps(resolved_continual(continual_config(wildcards)), sort_keys=True)
