"""Why `tgdd pipeline` must (re)do an output: it is missing, or what made it differs from what the
config asks for now.

The workflow gets this from Snakemake (each rule declares its config section as ``params``, and
newer inputs trigger their consumers); the single-process pipeline gets it here, from the
records every artifact carries: a synthetic set keeps the resolved config and the hashes of the
data and trajectories it was distilled from; an evaluation keeps its ``evaluate`` settings and
the hash of the synthetic set it trained on. Without this a rerun after a config change would
silently keep results of the old settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tgdd import paths
from tgdd.artifacts import read_json, sha256_file
from tgdd.config import Config, section_settings

_ABSENT = object()


def _show(value: Any) -> str:
    return "(none)" if value is _ABSENT else repr(value)


def changes(recorded: dict[str, Any], current: dict[str, Any], prefix: str) -> list[str]:
    """``prefix.key: recorded -> current`` for every key whose value differs (or is on one side only)."""
    found = []
    for key in sorted(recorded.keys() | current.keys()):
        old, new = recorded.get(key, _ABSENT), current.get(key, _ABSENT)
        if old != new:
            found.append(f"{prefix}.{key}: {_show(old)} -> {_show(new)}")
    return found


class Freshness:
    """Reasons to redo the outputs of one pipeline plan (hashes are computed once per file)."""

    def __init__(self) -> None:
        self._hashes: dict[Path, str] = {}
        self._train_hashes: dict[Path, str | None] = {}

    def _sha256(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = sha256_file(path)
        return self._hashes[path]

    def _prepared_train_sha256(self, cell: Config) -> str | None:
        """The training split's hash, from the data set's prepared manifest (None: not prepared)."""
        manifest = paths.prepared_dir(cell) / "manifest.json"
        if manifest not in self._train_hashes:
            entry = (read_json(manifest).get("files") or {}).get("train.pt") or {} if manifest.is_file() else {}
            self._train_hashes[manifest] = entry.get("sha256")
        return self._train_hashes[manifest]

    def experts(self, cell: Config) -> str | None:
        """Why the cell's expert trajectories must be (re)trained or finished. `tgdd experts`
        itself keeps every trajectory that still matches (see :func:`tgdd.experts.train_experts`)."""
        manifest = paths.experts_dir(cell) / "manifest.json"
        if not manifest.is_file():
            return "missing"
        recorded = read_json(manifest)
        if not recorded.get("complete"):
            return "incomplete"
        return ", ".join(changes(recorded.get("experts") or {}, section_settings(cell, "experts"), "experts")) or None

    def distill(self, cell: Config, trajectories_redone: bool, uses_trajectories: bool) -> str | None:
        """Why the cell's synthetic set must be distilled (None: it is up to date)."""
        path = paths.synthetic_file(cell)
        if not path.is_file():
            return "missing"
        from tgdd.synthetic import load_synthetic_meta  # torch: only once there is a set to read

        meta = load_synthetic_meta(path)
        recorded = (meta.get("config") or {}).get("distill") or {}
        found = changes(recorded, section_settings(cell, "distill"), "distill")
        if found:
            return ", ".join(found)
        inputs = meta.get("inputs") or {}
        train_sha256 = self._prepared_train_sha256(cell)
        if train_sha256 is not None and inputs.get("train_sha256") != train_sha256:
            return "the prepared training data changed"
        if uses_trajectories:
            if trajectories_redone:
                return "its expert trajectories are (re)trained"
            manifest = paths.experts_dir(cell) / "manifest.json"
            if manifest.is_file() and inputs.get("trajectories_manifest_sha256") != self._sha256(manifest):
                return "its expert trajectories changed"
        return None

    def evaluation(self, cell: Config, arch: str, synthetic_redone: bool) -> str | None:
        """Why the evaluation of the cell's synthetic set on ``arch`` must be redone."""
        path = paths.evaluation_file(cell, arch)
        if not path.is_file():
            return "missing"
        if synthetic_redone:
            return "its synthetic set is (re)distilled"
        result = read_json(path)
        recorded = result.get("evaluate")
        if recorded is None:
            return "written by an older tgdd, without its evaluate settings"
        found = changes(recorded, section_settings(cell, "evaluate", "archs"), "evaluate")
        if found:
            return ", ".join(found)
        synthetic = paths.synthetic_file(cell)
        if synthetic.is_file() and result.get("synthetic_sha256") != self._sha256(synthetic):
            return "its synthetic set changed"
        return None
