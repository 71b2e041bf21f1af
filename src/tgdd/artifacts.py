"""Writing and reading artifacts atomically, with the metadata that makes them trustworthy.

Every file is written to a temporary name in its target directory and renamed into place,
so a killed job never leaves a file a later step (or Snakemake, or DVC) would take as
complete. Every artifact embeds its provenance: code version, library versions, device.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from tgdd.errors import TgddError

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _temporary_sibling(path: Path):
    """A temporary file next to ``path`` that replaces it only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise TgddError(f"cannot write to {path.parent}: {exc.strerror}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one rename."""
    with _temporary_sibling(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TgddError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise TgddError(f"{path} is not valid JSON ({exc})") from None


def torch_save(path: Path, obj: Any) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def read_checked(path: Path, expected_sha256: str, what: str) -> bytes:
    """A file's bytes, read once, after checking them against the SHA-256 its manifest recorded."""
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise TgddError(f"{what} {path} fails its checksum (truncated or changed)")
    return data


def torch_load(path: Path, what: str, data: bytes | None = None, mmap: bool = False) -> Any:
    """Load a tgdd torch file (or its already read ``data``), turning a missing or damaged file
    into one clear error. ``mmap``: map the tensors instead of reading them (for metadata)."""
    import io
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if data is None and not path.is_file():
        raise TgddError(f"{what} {path} does not exist")
    try:
        source = io.BytesIO(data) if data is not None else path
        return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap and data is None)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TgddError(f"{what} {path} is corrupt or truncated ({first})") from None


@cache
def code_version() -> dict[str, Any]:
    """The git commit of the tgdd source tree and whether it had uncommitted changes."""
    from tgdd import __version__

    root = Path(__file__).resolve().parents[2]
    info: dict[str, Any] = {"package": __version__, "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        info.update(git_commit=commit, git_dirty=bool(status.strip()))
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout (an installed wheel): the package version stands alone
    return info


def environment(device: str) -> dict[str, Any]:
    """Library versions and the device, recorded with every artifact."""
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
        "platform": platform.platform(),
        "device": device,
    }


def provenance(device: str) -> dict[str, Any]:
    return {"code": code_version(), "env": environment(device), "created": datetime.now(UTC).isoformat()}
