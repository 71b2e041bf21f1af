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
        if os.path.exists(tmp):  # gone: the caller kept the existing file (atomic_write)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one rename, unless ``path``
    already holds exactly those bytes: then it is left as it was (its modification time too), so
    rewriting an artifact with the same content changes nothing Snakemake, DVC or tgdd look at."""
    with _temporary_sibling(path) as tmp:
        write(tmp)
        if _same_bytes(Path(tmp), Path(path)):
            os.unlink(tmp)
    return Path(path)


def _same_bytes(new: Path, old: Path) -> bool:
    """Whether ``old`` exists with exactly the bytes of ``new`` (sizes first, then block by block)."""
    try:
        if old.stat().st_size != new.stat().st_size:
            return False
        with open(new, "rb") as a, open(old, "rb") as b:
            while block := a.read(_CHUNK):
                if block != b.read(len(block)):
                    return False
    except OSError:
        return False
    return True


def write_json(path: Path, data: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


PROVENANCE_KEYS = ("code", "env", "created")  # what :func:`provenance` adds


def write_record(path: Path, data: dict[str, Any]) -> Path:
    """A JSON manifest that carries :func:`provenance`: rewritten only when its content changes, so
    redoing a step that makes the same content (preparing the same files again, gathering the same
    trajectories) keeps the first record, its bytes and modification time."""
    path = Path(path)
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and _without_provenance(old) == _without_provenance(json.loads(json.dumps(data))):
            return path
    return write_json(path, data)


def _without_provenance(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in PROVENANCE_KEYS}


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
    """``torch.save`` through an open file, not a file name: given a name, torch stores it inside
    the zip (the temporary name here, random), so equal objects would give different bytes."""
    import torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    return atomic_write(path, write)


def content_digest(obj: Any) -> str:
    """SHA-256 of what ``obj`` holds (nested dicts, lists, tensors, JSON values), independent of how
    it is serialised: the identity of an artifact's content, which its provenance (time, code
    version, machine) does not change. Dict keys are taken in sorted order; a tensor contributes its
    dtype, shape and bytes."""
    import torch

    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=str):
                digest.update(json.dumps(str(key)).encode())
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, list | tuple):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(json.dumps(value, sort_keys=True).encode())

    feed(obj)
    return digest.hexdigest()


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


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` says: for the
    machine line of benchmark results."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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


def provenance(device: str, timestamp: bool = True) -> dict[str, Any]:
    """Code version and environment, and (``timestamp``) when. Artifacts that other steps read
    (prepared data, trajectories, their manifests, synthetic sets) carry no time: made again from the
    same inputs with the same code on the same machine, they are the same bytes, so neither DVC nor
    Snakemake nor tgdd sees a change (their files' modification times say when)."""
    record = {"code": code_version(), "env": environment(device)}
    return {**record, "created": datetime.now(UTC).isoformat()} if timestamp else record
