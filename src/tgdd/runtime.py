"""Device choice and seed derivation: every random stream is named and derives from the
configured seed, so runs repeat exactly and stay independent of each other."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager

import numpy as np
import torch

from tgdd.errors import TgddError


def derive_seed(seed: int, *names: object) -> int:
    """A 63-bit seed for the stream ``names`` under ``seed`` (stable across runs and platforms)."""
    text = "/".join([str(seed), *map(str, names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def generator(seed: int, *names: object, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *names))


def numpy_rng(seed: int, *names: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *names))


@contextmanager
def seeded_init(seed: int):
    """Network initialisation draws from torch's global RNG: fork and seed it for the block."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def resolve_device(name: str) -> torch.device:
    """The torch device of ``device``: ``auto`` is CUDA when torch sees a GPU, else the CPU. A CUDA
    device that is not there is an error at once (a GPU preset must not train on a CPU thread for
    days because its job was not granted a GPU), naming what torch sees and the two ways out."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TgddError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise TgddError(
                f"device={name}, but torch sees {count} CUDA device{'' if count == 1 else 's'} "
                f"({cuda_context()}): run this step where it gets a GPU (on SLURM: a GPU partition, "
                "TGDD_SLURM_PARTITION) or pass device=cpu (or device=auto, which falls back to the CPU)"
            )
    return device


def cuda_context() -> str:
    """What decides whether torch sees a GPU: its CUDA build and CUDA_VISIBLE_DEVICES."""
    build = f"torch {torch.__version__}, CUDA build {torch.version.cuda}" if torch.version.cuda else "a CPU-only torch"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return build + ("" if visible is None else f", CUDA_VISIBLE_DEVICES={visible!r}")


def configure_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def configure_determinism(deterministic: bool) -> None:
    """On CUDA, some kernels (atomic adds in backward passes of pooling, grid_sample, index_put)
    are non-deterministic; ``deterministic`` makes torch use deterministic ones or fail loudly.
    CPU runs are deterministic either way."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
