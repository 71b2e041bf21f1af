"""Writing and reading artifacts atomically, with the metadata that makes them trustworthy.

Every file is written to a temporary name in its target directory and renamed into place,
so a killed job never leaves a file a later step (or Snakemake, or DVC) would take as
complete; files and directories get the mode the user's umask gives any new file. Every artifact embeds its provenance: code version, library versions, device.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import secrets
import subprocess
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


def _new_file(directory: Path, name: str) -> Path:
    """A new, empty, uniquely named file ``directory/.<name>.<random>.tmp``, created the way any
    file the user writes is: mode 0666 less the umask (or as the directory's default ACL says).

    Not ``tempfile.mkstemp``: it creates 0600, and the rename would carry that into the artifact,
    which the people sharing the project directory (a group, a shared DVC cache, an MLflow server
    running as another user) then could not read.
    """
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory / f".{name}.*.tmp"))


@contextmanager
def _temporary_sibling(path: Path):
    """A temporary file next to ``path`` that replaces it only if the block succeeds. Directories
    are created as ``mkdir`` does (0777 less the umask), files as :func:`_new_file` does."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_file(path.parent, path.name)
    except OSError as exc:
        raise TgddError(f"cannot write to {path.parent}: {exc.strerror}") from None
    try:
        yield tmp
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
