"""A bad config through real Snakemake (a throwaway copy of the workflow): the CLI's one line with a
suggestion, before any job, instead of the JSON schema's dump of the whole config model."""

from __future__ import annotations

import pytest
import yaml

from .test_workflow import make_project, snakemake, tiny_tree


def _refused(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    return proc.stdout


@pytest.mark.parametrize(
    "section, message",
    [
        ({"distil": {"ipc": 1}}, "unknown config key 'distil' (top level). Did you mean 'distill'?"),
        ({"distill": {"ipcs": 1}}, "unknown config key 'distill.ipcs' (distill). Did you mean 'ipc'?"),
        ({"experts": {"epochs": -1}}, "config key 'experts.epochs': Input should be greater than or equal to 1"),
    ],
    ids=["section-name", "key-name", "value"],
)
def test_a_config_typo_is_one_line_with_a_suggestion(tmp_path, section, message):
    project = make_project(tmp_path / "project")
    bad = tmp_path / "bad.yaml"
    tree = tiny_tree()
    for key, value in section.items():
        tree[key] = {**tree.get(key, {}), **value}
    bad.write_text(yaml.safe_dump(tree))
    out = _refused(snakemake("-n", "--configfile", str(bad), "--cores", "1", cwd=project, check=False))
    assert f"{bad}: {message}" in out, out
    assert "Failed validating" not in out and "properties" not in out  # no schema dump
    assert len(out.splitlines()) <= 6, out  # Snakemake's own lines around the one message
    assert not (project / "results").exists()


def test_config_on_the_command_line_is_refused_in_one_line(tmp_path):
    """tgdd reads one config file: `--config` would be merged into Snakemake's config, which tgdd never sees."""
    project = make_project(tmp_path / "project")
    out = _refused(snakemake("-n", "--config", "seed=1", "--cores", "1", cwd=project, check=False))
    assert "--config key=value is not passed to tgdd: put the settings into a config file" in out
    assert len(out.splitlines()) <= 6, out


def test_a_dotted_config_key_is_refused_before_the_workflow_is_read(tmp_path):
    """`--config distill.iterations=2`: Snakemake's own parser refuses a key that is not an identifier
    (snakemake/cli.py parse_config, Snakemake >= 8.17; snakemake/snakemake#3907) with its traceback, before
    reading the Snakefile, so no workflow code can word it; either refusal is fine, nothing runs."""
    project = make_project(tmp_path / "project")
    out = _refused(snakemake("-n", "--config", "distill.iterations=2", "--cores", "1", cwd=project, check=False))
    assert "Config entry must start with a valid identifier" in out or "is not passed to tgdd" in out, out
    assert not (project / "results").exists()
