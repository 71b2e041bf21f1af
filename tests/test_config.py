import subprocess
import sys
from pathlib import Path

import pytest

from tgdd.config import build_config, flatten, load_config, parse_overrides
from tgdd.errors import TgddError

REPO = Path(__file__).parents[1]


def test_defaults_validate_and_overrides_are_typed():
    cfg = build_config({}, ["distill.ipc=50", "evaluate.archs=[convnet-3,resnet10-ap]", "distill.tgdd.alpha=null"])
    assert cfg.distill.ipc == 50
    assert cfg.evaluate.archs == ["convnet-3", "resnet10-ap"]
    assert cfg.distill.tgdd.alpha is None


def test_parse_overrides_yaml_values():
    assert parse_overrides(["a.b=1", "c=true", "d=x"]) == [("a.b", 1), ("c", True), ("d", "x")]
    with pytest.raises(TgddError, match="key=value"):
        parse_overrides(["nonsense"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill.ipcc=3", r"unknown config key 'distill.ipcc'.*Did you mean 'ipc'"),
        ("distil.ipc=3", r"unknown config key 'distil'.*Did you mean 'distill'"),
        ("distill.ipc=0", r"distill.ipc.*greater than or equal to 1"),
        ("distill.ipc=-2", r"distill.ipc"),
        ("dataset=cifar", r"unknown dataset 'cifar'.*Did you mean 'cifar10'"),
        ("distill.method=tggd", r"unknown method 'tggd'.*Did you mean 'tgdd'"),
        ("experts.arch=convnet-x", r"unknown model 'convnet-x'"),
        ("evaluate.protocol=paper", r"unknown evaluation protocol 'paper'"),
        ("distill.dsa_strategy=color_blur", r"unknown augmentation group"),
        ("matrix.ipcs=[1,0]", r"IPC must be >= 1"),
    ],
)
def test_bad_values_fail_with_one_clear_line(override, message):
    with pytest.raises(TgddError, match=message) as info:
        build_config({}, [override])
    assert "\n" not in str(info.value)


def test_load_config_errors(tmp_path: Path):
    with pytest.raises(TgddError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(TgddError, match="mapping"):
        load_config(bad)


def test_quick_preset_validates():
    cfg = load_config(Path(__file__).parents[1] / "config" / "quick.yaml")
    assert cfg.dataset == "digits"
    assert "distill.ipc" in flatten(cfg.model_dump())


def test_overrides_do_not_leak_into_the_callers_tree():
    tree = {"distill": {"ipc": 3}}
    assert build_config(tree, ["distill.method=dm"]).distill.method == "dm"
    assert tree == {"distill": {"ipc": 3}}
    assert build_config(tree).distill.method == "tgdd"


def test_readme_config_table_is_current():
    from tgdd.docs import render

    # The table lives in docs/configuration.md (linked from the README); render fails without its block.
    table = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    assert render(table) == table, "docs/configuration.md's config table is stale: run `python -m tgdd.docs`"


def test_config_validation_and_workflow_imports_leave_torch_out():
    """Validating a config (every `tgdd` step, `tgdd config`, each Snakemake start) must not pay
    for importing torch: the registries it checks names against are torch-free."""
    code = (
        "import sys; from pathlib import Path; from tgdd.config import load_config; "
        "import tgdd.paths, tgdd.protocols, tgdd.methods, tgdd.data.registry, tgdd.steps; "
        "load_config(Path('config/paper.yaml')); load_config(Path('config/config.yaml')); "
        "print(sorted(m for m in ('torch', 'mlflow', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_list_shows_every_registered_name(capsys):
    from tgdd.cards import METHODS
    from tgdd.cli import main
    from tgdd.protocols import PROTOCOLS

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "fashion_mnist" in out and "resnet10-ap[-bn][-w16]" in out
    for name in [*METHODS.names(), *PROTOCOLS.names()]:
        assert name in out
    assert all(METHODS.get(name).summary in out for name in METHODS.names())
