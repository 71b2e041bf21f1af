"""Why an output must be (re)done: it is missing, or the settings it was made with differ from the
ones its step would run with now, or an input changed.

"Settings" are always the RESOLVED ones, never the config as written: ``null`` means "the
method's (or protocol's) published default", so a default changed in the code changes what a step
runs with exactly as an edited config does. One function per step computes them, torch-free, in
:mod:`tgdd.resolve` (``resolved_experts``, ``resolved_distill``, ``resolved_evaluation``); each artifact
records them, `tgdd pipeline` compares the records here (:class:`Freshness`), and the Snakemake
rules declare the same values as ``params`` (so Snakemake's params trigger reruns exactly the jobs
they changed, and `dvc repro`, which runs the Snakemake targets, with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tgdd import paths
from tgdd.artifacts import read_json, sha256_file
from tgdd.config import Config, flatten
from tgdd.resolve import NOT_RESULT_KEYS, num_trajectories, resolved_distill, resolved_evaluation

_ABSENT = object()


def _show(value: Any) -> str:
    return "(none)" if value is _ABSENT else repr(value)


def changes(recorded: dict[str, Any], current: dict[str, Any], prefix: str, note: str = "") -> list[str]:
    """``prefix.key{note}: recorded -> current`` for every (flattened) key whose value differs or is on
    one side only."""
    old_flat, new_flat = flatten(recorded), flatten(current)
    found = []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        if key.rsplit(".", 1)[-1] in NOT_RESULT_KEYS:
            continue
        old, new = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
        if old != new:
            found.append(f"{prefix}.{key}{note}: {_show(old)} -> {_show(new)}")
    return found


class Freshness:
    """Reasons to redo the outputs of one pipeline plan (hashes are computed once per file)."""

    def __init__(self) -> None:
        self._hashes: dict[Path, str] = {}
        self._digests: dict[Path, str] = {}
        self._train_hashes: dict[Path, str | None] = {}

    def _sha256(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = sha256_file(path)
        return self._hashes[path]

    def _trajectories_digest(self, cell: Config, recipe: str) -> str | None:
        """The content digest of the cell's trajectories, from their manifest (tgdd.experts.manifest_digest)."""
        from tgdd.experts import manifest_digest

        manifest = paths.experts_dir(cell, recipe) / "manifest.json"
        return manifest_digest(read_json(manifest), num_trajectories(cell, recipe))

    def _synthetic_digest(self, path: Path) -> str:
        """A synthetic set's content digest (tgdd.synthetic.synthetic_digest), computed once per file."""
        if path not in self._digests:
            from tgdd.synthetic import load_synthetic, synthetic_digest

            self._digests[path] = synthetic_digest(load_synthetic(path))
        return self._digests[path]

    def _prepared_train_sha256(self, cell: Config) -> str | None:
        """The training split's hash, from the data set's prepared manifest (None: not prepared)."""
        manifest = paths.prepared_dir(cell) / "manifest.json"
        if manifest not in self._train_hashes:
            entry = (read_json(manifest).get("files") or {}).get("train.pt") or {} if manifest.is_file() else {}
            self._train_hashes[manifest] = entry.get("sha256")
        return self._train_hashes[manifest]

    def trajectory(self, cell: Config, index: int, recipe: str = "tgdd") -> str | None:
        """Why trajectory ``index`` of ``recipe`` must be (re)trained (None: it is finished)."""
        from tgdd.experts import trajectory_file, trajectory_header, trajectory_identity

        header = trajectory_header(trajectory_file(paths.experts_dir(cell, recipe), index))
        if header is None:
            return "missing"
        train_sha256 = self._prepared_train_sha256(cell)
        if train_sha256 is None:  # `tgdd experts` checks it against the data once prepared, keeping it if equal
            return "its data is (re)prepared"
        recorded = header["identity"]
        wanted = trajectory_identity(cell, train_sha256, index, recipe)
        if recorded.get("train_sha256") != wanted["train_sha256"]:
            return "the prepared training data changed"
        found = changes(recorded.get("recipe") or {}, wanted["recipe"], "experts", " (resolved)")
        found += changes({k: v for k, v in recorded.items() if k not in ("recipe", "train_sha256")},
                         {k: v for k, v in wanted.items() if k not in ("recipe", "train_sha256")}, "trajectory")  # fmt: skip
        return ", ".join(found) or None

    def experts(self, cell: Config, recipe: str = "tgdd") -> str | None:
        """Why the cell's expert trajectories of ``recipe`` must be (re)trained or gathered: which
        trajectories and why, or the manifest. `tgdd experts` keeps every trajectory that is finished."""
        wanted = num_trajectories(cell, recipe)
        reasons = {i: self.trajectory(cell, i, recipe) for i in range(wanted)}
        redo = [f"trajectory {i}: {why}" for i, why in reasons.items() if why]
        if redo:
            return "; ".join(redo)
        manifest = paths.experts_dir(cell, recipe) / "manifest.json"
        if not manifest.is_file():
            return "manifest missing"
        recorded = read_json(manifest)
        count = len(recorded.get("trajectories") or [])
        if not recorded.get("complete") or count != wanted:
            return f"num_trajectories ({recipe}): {count} -> {wanted}"
        for record in recorded["trajectories"]:
            path = manifest.parent / record["file"]
            if self._sha256(path) != record.get("sha256"):
                return f"{record['file']} changed since the manifest was written"
        return None

    def distill(
        self, cell: Config, trajectories_redone: bool, uses_trajectories: bool, recipe: str = "tgdd"
    ) -> str | None:
        """Why the cell's synthetic set must be distilled (None: it is up to date)."""
        path = paths.synthetic_file(cell)
        if not path.is_file():
            return "missing"
        from tgdd.synthetic import load_synthetic_meta  # torch: only once there is a set to read

        meta = load_synthetic_meta(path)
        wanted = resolved_distill(cell)
        if wanted is None:  # an imported set: nothing to redo
            return None
        found = changes(meta.get("settings") or {}, wanted, "distill", " (resolved)")
        if found:
            return ", ".join(found)
        inputs = meta.get("inputs") or {}
        train_sha256 = self._prepared_train_sha256(cell)
        if train_sha256 is not None and inputs.get("train_sha256") != train_sha256:
            return "the prepared training data changed"
        if uses_trajectories:
            if trajectories_redone:
                return "its expert trajectories are (re)trained (kept if they come out the same)"
            manifest = paths.experts_dir(cell, recipe) / "manifest.json"
            if manifest.is_file() and inputs.get("trajectories_sha256") != self._trajectories_digest(cell, recipe):
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
        recorded = {k: result.get(k, _ABSENT) for k in ("runs", "protocol", "protocol_settings")}
        if recorded["protocol_settings"] is _ABSENT:
            return "written by an older tgdd, without its resolved protocol settings"
        synthetic = paths.synthetic_file(cell)
        factor = None
        if synthetic.is_file():
            from tgdd.synthetic import load_synthetic_meta

            factor = load_synthetic_meta(synthetic).get("factor")
        found = changes(recorded, resolved_evaluation(cell, factor), "evaluate", " (resolved)")
        if found:
            return ", ".join(found)
        if synthetic.is_file() and result.get("synthetic_content_sha256") != self._synthetic_digest(synthetic):
            return "its synthetic set changed"
        return None

    def continual(self, cell: Config, steps: int, synthetic_redone: bool) -> str | None:
        """Why the class-incremental evaluation of the cell's synthetic set in ``steps`` steps must be redone."""
        from tgdd.resolve import resolved_continual

        path = paths.continual_file(cell, steps)
        if not path.is_file():
            return "missing"
        if synthetic_redone:
            return "its synthetic set is (re)distilled"
        result = read_json(path)
        wanted = resolved_continual(cell, self._factor(cell))
        found = changes({k: result.get(k, _ABSENT) for k in wanted}, wanted, "continual", " (resolved)")
        if found:
            return ", ".join(found)
        synthetic = paths.synthetic_file(cell)
        if synthetic.is_file() and result.get("synthetic_content_sha256") != self._synthetic_digest(synthetic):
            return "its synthetic set changed"
        return None

    def _factor(self, cell: Config) -> int | None:
        """The factor of the cell's synthetic set, from its meta (None: no set yet)."""
        synthetic = paths.synthetic_file(cell)
        if not synthetic.is_file():
            return None
        from tgdd.synthetic import load_synthetic_meta

        return load_synthetic_meta(synthetic).get("factor")
