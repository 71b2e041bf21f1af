"""Every command of the README's shell blocks works as written: run here, at a tiny scale or dry, in a
throwaway copy of the project; or listed below with the reason it cannot run here, or the test that
runs it. A command the README gains that is neither run nor listed fails
:func:`test_every_readme_command_is_run_or_listed` (README.md is read when the tests are collected).
The same holds for the documents that blocks moved to from the README (``DOCS``: docs/interchange.md
holds its import/export recipe), and the inline ``tgdd ...`` commands of the README and of the
documents that took over its reference sections (``INLINE_DOCS``) parse.

The copy holds what the commands name: a config file literally called ``C`` (the README's
placeholder; tiny settings, absolute paths), a DM result file ``res_DM_CIFAR10_ConvNet_10ipc.pt``,
CIFAR-10 as torchvision's pickled batches (random pixels, 50 images per class), the tiny digits
config as ``config/config.yaml`` and the repository's presets, profiles, Makefile and dvc.yaml.
"""

from __future__ import annotations

import json
import pickle
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tgdd import paths, steps
from tgdd.cli import parse_args
from tgdd.config import load_config
from tgdd.data.prepared import load_prepared

from .conftest import TINY
from .test_workflow import REPO, env, make_project, run

README = REPO / "README.md"
# The documents whose shell blocks are run or listed here: the README and where its blocks moved.
DOCS = (README, REPO / "docs" / "interchange.md")
# The documents whose inline `tgdd ...` commands must parse: the README and where its prose moved.
INLINE_DOCS = (README, REPO / "docs" / "pipeline.md", REPO / "docs" / "configuration.md")
SHELLS = {"bash", "sh", "shell", "console", "zsh"}
OPENERS = re.compile(r"^\s*(for|while|until|if|case)\b|;\s*(for|while|until|if|case)\b")
CLOSERS = re.compile(r"\b(done|fi|esac)\b")


# ------------------------------------------------------------------------------------------------
# The README's commands
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    line: int  # line of its first line in its document
    text: str  # without comments; continuation lines joined; a loop with its body
    doc: str = "README.md"  # its document, relative to the repository root


@dataclass(frozen=True)
class Block:
    line: int  # line of the opening fence in its document
    commands: tuple[Command, ...]
    doc: str = "README.md"

    @property
    def id(self) -> str:
        first = self.commands[0].text.split()[0] if self.commands else "empty"
        prefix = "" if self.doc == "README.md" else Path(self.doc).stem + "-"
        return f"{prefix}line{self.line}-{first}"

    @property
    def where(self) -> str:
        return f"{self.doc} line {self.line}"


def _strip_comment(line: str) -> str:
    """The line without its shell comment (``#`` at the start or after a blank, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _commands(lines: list[tuple[int, str]], console: bool, doc: str = "README.md") -> tuple[Command, ...]:
    """Logical commands: ``\\`` continuations joined, a ``for ... done`` kept whole."""
    out: list[Command] = []
    pending: list[str] = []
    start, depth = 0, 0
    for number, raw in lines:
        if console:
            if not raw.startswith("$ ") and not pending:
                continue  # a console block's output
            raw = raw.removeprefix("$ ")
        text = _strip_comment(raw)
        if not text.strip() and not pending:
            continue
        if not pending:
            start = number
        pending.append(text)
        depth += len(OPENERS.findall(text)) - len(CLOSERS.findall(text))
        if text.endswith("\\") or depth > 0:
            continue
        joined = "\n".join(pending).replace("\\\n", " ")
        out.append(Command(start, re.sub(r"[ \t]+", " ", joined).strip(), doc))
        pending, depth = [], 0
    assert not pending, f"{doc} line {start}: unfinished command {pending}"
    return tuple(out)


def readme_blocks(text: str | None = None, doc: Path = README) -> list[Block]:
    """The fenced shell blocks (```bash, ```sh, ```console, ...) of the README (or ``doc``), in order."""
    name = doc.relative_to(REPO).as_posix()
    lines = (text if text is not None else doc.read_text()).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(```+|~~~+)\s*([\w-]*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1))), len(lines))
        if fence.group(2).lower() in SHELLS:
            body = [(j + 1, lines[j]) for j in range(i + 1, end)]
            blocks.append(Block(i + 1, _commands(body, fence.group(2).lower() == "console", name), name))
        i = end + 1
    return blocks


# ------------------------------------------------------------------------------------------------
# How each command is run here, or why not (first matching rule)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    pattern: str  # a regex matched against the start of the command
    kind: str  # run: as written; env: an export, run; dry: as `dry` rewrites it; skip / elsewhere: not here
    reason: str
    dry: Callable[[str], str] | None = None

    def matches(self, command: Command) -> bool:
        return re.match(self.pattern, command.text) is not None


def _make_dry(text: str) -> str:
    """`make X`: what it would run (`make -n X`); for `make run`, that command as a Snakemake dry run."""
    target = text.split()[1]
    if target != "run":
        return f"make -n {target}"
    return 'cmd=$(make -n run | grep "snakemake --cores") && echo "$cmd" && $cmd -n'


RULES = [
    Rule(r"make (run|test|format)$", "dry", "make -n; `make run`'s Snakemake command as a dry run", _make_dry),
    Rule(r"TGDD_DEBUG=1 tgdd \.\.\.$", "skip", "a template: any tgdd command (`...`)"),
    Rule(r"export [A-Z_]+=", "env", "the environment of the block's next commands"),
    Rule(r"snakemake --profile slurm\b.* -n\b", "run", "a dry run of the paper preset through the cluster profile"),
    Rule(
        r"snakemake --profile slurm$",
        "dry",
        "the cluster smoke test (the quick preset; here the tiny config) as a dry run through the cluster profile",
        lambda text: f"{text} -n",
    ),
    Rule(r"snakemake --profile slurm\b", "skip", "submits every job of the paper preset to a SLURM cluster"),
    # docs/interchange.md: its synopsis and its recipe on the paper preset (the README's recipe, moved
    # there, is the block these tests run)
    Rule(
        r"tgdd (import-synthetic --format (idc|mtt) |(import|export)-synthetic .*\[)",
        "skip",
        "a synopsis: optional arguments in [brackets], and the authors' own files (data_best.pt, images_best.pt), "
        "which exist only where their code ran (each format's import: tests/test_interchange.py)",
    ),
    Rule(
        r"(?s)(C=\S+$|.*\$C\b)",
        "elsewhere",
        "docs/interchange.md's recipe on C=config/paper.yaml (a GPU preset, the real CIFAR-10): "
        "tests/test_interchange.py::test_imported_set_is_evaluated_and_reported_beside_ours runs the same "
        "steps (import a DM set, evaluate it and one of ours under protocols tgdd and dc, report) on the digits",
    ),
    Rule(r"(for .*; do\s+)*tgdd ", "run", "tiny settings in C, CIFAR-10 as random pixels"),
    Rule(r"dvc metrics show$", "run", "reads the metrics.json that `tgdd report` wrote"),
    Rule(
        r"dvc (repro|remote add|pull)\b",
        "elsewhere",
        "tests/test_workflow.py::test_dvc_repro_runs_every_stage, ::test_dvc_repro_again_does_nothing, "
        "::test_remote_round_trip_restores_outputs_and_snakemake_stays_quiet (the same commands on the tiny "
        "project, `snakemake --touch --cores 1` after `dvc pull` included)",
    ),
    Rule(
        r"mlflow (ui|server)\b", "skip", "starts a server that runs until stopped (its store: tests/test_tracking.py)"
    ),
]


def rule_of(command: Command) -> Rule | None:
    return next((rule for rule in RULES if rule.matches(command)), None)


def _script(block: Block) -> str:
    """The block as one bash script: runnable commands as written (or dry), the others a no-op."""
    lines = ["set -e -o pipefail"]
    for command in block.commands:
        rule = rule_of(command)
        assert rule is not None, f"{command.doc} line {command.line}: {command.text}"
        if rule.kind in ("run", "env"):
            lines.append(command.text)
        elif rule.kind == "dry":
            lines.append(rule.dry(command.text))
        else:
            lines.append(f": not run here: {shlex.quote(command.text)}")
    return "\n".join(lines) + "\n"


BLOCKS = [block for doc in DOCS for block in readme_blocks(doc=doc)]
RUNNABLE = [b for b in BLOCKS if any(rule_of(c) and rule_of(c).kind in ("run", "dry") for c in b.commands)]
# (a block of exports and servers alone runs nothing worth checking)


def test_the_readme_has_shell_blocks():
    assert BLOCKS and RUNNABLE and any(b.doc == "README.md" for b in RUNNABLE)


def test_every_readme_command_is_run_or_listed():
    unlisted = [f"{c.doc} line {c.line}: {c.text}" for b in BLOCKS for c in b.commands if rule_of(c) is None]
    assert not unlisted, (
        "README commands that tests/test_readme_commands.py neither runs nor lists (add a Rule: how to run "
        "it here, or why it cannot run):\n" + "\n".join(unlisted)
    )


def test_every_rule_is_for_a_readme_command():
    """A rule no command of DOCS matches any more is stale: remove it."""
    commands = [c for b in BLOCKS for c in b.commands]
    stale = [rule.pattern for rule in RULES if not any(rule.matches(c) for c in commands)]
    assert not stale, f"rules for commands the README (and DOCS) no longer have: {stale}"


def test_commands_run_elsewhere_are_tested_there():
    """Each 'elsewhere' reason names a test file and its tests (``tests/x.py::a, ::b``): they exist."""
    for rule in RULES:
        if rule.kind == "elsewhere":
            file = re.search(r"tests/\w+\.py", rule.reason)
            tests = re.findall(r"::(\w+)", rule.reason)
            assert file and tests, rule.reason
            source = (REPO / file.group(0)).read_text()
            assert all(f"def {test}(" in source for test in tests), (file.group(0), tests)


def test_the_parser_of_these_tests():
    text = "\n".join(
        [
            "```bash",
            "a --x 1   # comment",
            "# only a comment",
            "b \\",
            "  --y 2",
            "for p in 1 2; do",
            "  for q in 3; do c $p $q; done",
            "done",
            "```",
            "```console",
            "$ d 'x # not a comment'",
            "output line",
            "```",
            "```python",
            "not shell",
            "```",
        ]
    )
    blocks = readme_blocks(text)
    assert [c.text for c in blocks[0].commands] == [
        "a --x 1",
        "b --y 2",
        "for p in 1 2; do\n for q in 3; do c $p $q; done\ndone",
    ]
    assert [c.line for c in blocks[0].commands] == [2, 4, 6]
    assert [c.text for c in blocks[1].commands] == ["d 'x # not a comment'"] and len(blocks) == 2


# ------------------------------------------------------------------------------------------------
# The copy the commands run in
# ------------------------------------------------------------------------------------------------
CIFAR_PER_CLASS = 50  # TGDD's start at IPC 10 takes f x f x 10 = 40 real images per class


def _write_cifar10(root: Path) -> None:
    """torchvision's cifar-10-batches-py: 5 training batches and a test batch, random pixels, balanced."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    dump = lambda name, obj: (folder / name).write_bytes(pickle.dumps(obj))  # noqa: E731
    dump("batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072})
    per_batch = CIFAR_PER_CLASS * 10 // 5
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        dump(name, {b"batch_label": name.encode(), b"data": rows, b"labels": [i % 10 for i in range(per_batch)]})


def _write_c(project: Path) -> Path:
    """The README's `C`: tiny settings, data and results inside the copy."""
    tree = {
        **TINY,
        "paths": {"data": str(project / "data"), "results": str(project / "results")},
        "data": {"root": str(project / "data" / "raw")},
        "experts": {**TINY["experts"], "num_trajectories": 1},
        "distill": {"iterations": 1, "real_batch": 16},
        "evaluate": {"archs": ["convnet-1-w16"], "runs": 1, "epochs": 1},
        "matrix": {"datasets": ["digits"], "methods": ["tgdd"], "ipcs": [1]},  # digits has no experts here:
    }  # the report analyses no class overlap
    path = project / "C"
    path.write_text(yaml.safe_dump(tree))
    return path


def _write_dm_result(project: Path, config: Path) -> None:
    """DM's res_*.pt for CIFAR-10 IPC 10 (real images normalised as DM stores them, class-major)."""
    cfg = load_config(config, ["dataset=cifar10"])
    train = load_prepared(paths.prepared_dir(cfg), "train", "cifar10")
    idx = torch.cat([torch.nonzero(train.labels == c).flatten()[:10] for c in range(10)])
    manifest = json.loads((paths.prepared_dir(cfg) / "manifest.json").read_text())
    mean, std = (torch.tensor(manifest[key]).view(1, -1, 1, 1) for key in ("mean", "std"))
    images = (train.images[idx].float() / 255 - mean) / std
    torch.save(
        {"data": [[images, torch.arange(10).repeat_interleave(10)]]}, project / "res_DM_CIFAR10_ConvNet_10ipc.pt"
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The copy, with CIFAR-10 prepared, its experts and TGDD's IPC 10 set (the block compares against it)."""
    root = make_project(tmp_path_factory.mktemp("readme") / "project")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)  # what `make run` runs: .venv/bin/snakemake
    _write_cifar10(root / "data" / "raw")
    config = _write_c(root)
    cfg = load_config(config, ["dataset=cifar10", "distill.method=tgdd", "distill.ipc=10"])
    steps.prepare(cfg)
    steps.experts(cfg)
    steps.distill(cfg)
    steps.evaluate(cfg)
    steps.report(cfg)  # results/tables/metrics.json for `dvc metrics show`, whichever block runs first
    _write_dm_result(root, config)
    run(["git", "init", "-q"], root)
    run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], root)
    return root


# What each runnable block must have done, by a command it holds (beyond exiting 0).
def _imported_beside_ours(project: Path, out: str) -> None:
    summary = (project / "results" / "tables" / "summary.md").read_text()
    for protocol in ("tgdd", "dc"):
        table = summary.split(f"protocol `{protocol}`", 1)[1].split("###", 1)[0]
        assert "imported-dm-paper" in table and "| tgdd " in table, summary
    assert list((project / "results").rglob("images_best.pt")) and list((project / "results").rglob("labels_best.pt"))


def _paper_dry_run(project: Path, out: str) -> None:
    assert "This was a dry-run" in out and "tgdd_trajectory" in out and "tgdd_report" in out, out[-3000:]


def _make_dry(project: Path, out: str) -> None:
    assert "snakemake --cores all --configfile config/config.yaml" in out and "This was a dry-run" in out, out[-3000:]


def _metrics(project: Path, out: str) -> None:
    assert "metrics.json" in out, out


def _make_test(project: Path, out: str) -> None:
    assert "/pytest" in out and "snakemake --lint" in out, out


def _make_format(project: Path, out: str) -> None:
    assert "ruff format" in out and "snakefmt" in out, out


CHECKS: dict[str, Callable[[Path, str], None]] = {
    r"tgdd import-synthetic\b": _imported_beside_ours,
    r"snakemake --profile slurm\b.* -n\b": _paper_dry_run,
    r"make run$": _make_dry,
    r"make test$": _make_test,
    r"make format$": _make_format,
    r"dvc metrics show$": _metrics,
}


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_readme_block_runs(block, project):
    proc = run(["bash", "-c", _script(block)], project, limit=400)
    checked = 0
    for pattern, check in CHECKS.items():
        if any(re.match(pattern, c.text) for c in block.commands):
            check(project, proc.stdout)
            checked += 1
    assert checked, f"block at {block.where} runs, but nothing checks what it did: add to CHECKS"


# ------------------------------------------------------------------------------------------------
# Inline commands and the example error
# ------------------------------------------------------------------------------------------------
def _inline_tgdd_commands() -> list[str]:
    """`tgdd ...` spans of INLINE_DOCS' prose (joined across a line break) without placeholders."""
    text = "\n".join(doc.read_text() for doc in INLINE_DOCS)
    spans = [" ".join(s.split()) for s in re.findall(r"`(tgdd [^`]+)`", text)]
    placeholder = re.compile(r"[<\[]|\.\.\.|\b[A-Z]{1,5}\b")
    return sorted({s for s in spans if len(s.split()) > 2 and not placeholder.search(s)})  # not a step's name


def test_inline_tgdd_commands_parse():
    commands = _inline_tgdd_commands()
    assert "tgdd pipeline --config config/config.yaml threads=2" in commands
    for command in commands:
        args = parse_args(shlex.split(command)[1:])
        assert args.step == shlex.split(command)[1], command


def test_the_readme_example_error_is_the_real_one(tmp_path, prepared_root):
    """The 'IPC above the smallest class' row quotes `tgdd distill distill.ipc=500` on digits."""
    row = next(line for line in README.read_text().splitlines() if "IPC above the smallest class" in line)
    quoted = re.search(r"`(tgdd distill [^`]+)` on digits: `([^`]+)`", row)
    assert quoted, row
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump({**TINY, "paths": {"data": str(prepared_root / "data"), "results": str(tmp_path)}})
    )
    command = [*shlex.split(quoted.group(1)), "--config", str(config)]
    tgdd = Path(sys.executable).parent / "tgdd"
    proc = subprocess.run([str(tgdd), *command[1:]], capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"tgdd distill: error: {quoted.group(2)}", proc.stderr
