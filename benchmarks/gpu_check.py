"""GPU check: the CUDA path agrees with the CPU on a tiny case, then how fast it runs.

Run on a machine with a GPU: ``bash benchmarks/gpu_check.sh`` (under 8 minutes). It prints
everything it measures and writes ``benchmarks/results/gpu_check_<gpu>.md``. Without CUDA it runs the
CPU side only (a CPU pass against a repeat: passes share no state), says the GPU side was skipped,
writes ``gpu_check_cpu.md`` and exits 0 when the repeat agrees.

It also trains three networks stacked (tgdd.stacked) and one after another on the device and
compares their weights, compares the stacked step replayed from CUDA graphs (tgdd.graphs) with
it run eagerly, and times a network-step at K = 1 and K = 5 (eager and graphed).

"TGDD distillation, CUDA graphs vs eager" distils the embedded ``digits`` twice with the project's
own steps (prepare, experts, distill, in a temporary directory), batched classes, once with
``distill.cuda_graphs=never`` and once with ``always``: the synthetic images must agree (to a
tolerance on CUDA, where index_add's float atomics are nondeterministic; bit for bit on the CPU,
where ``always`` runs eagerly), with the replay count and milliseconds per iteration of each run.

Correctness compares the same computation on both devices with the same inputs and the same
drawn augmentation parameters (CPU and CUDA generators produce different streams, so whole runs
are compared in distribution, not bit for bit).
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from tgdd import steps
from tgdd.augment import DiffAugment, DrawnAugmentation, normalize
from tgdd.config import build_config
from tgdd.data.registry import get_dataset
from tgdd.graphs import GraphChoice, graph_backend
from tgdd.methods.matching import class_loss
from tgdd.models import build_model
from tgdd.protocols import PROTOCOLS
from tgdd.runtime import generator, numpy_rng, seeded_init
from tgdd.stacked import train_stacked
from tgdd.synthetic import SyntheticSet, load_synthetic
from tgdd.train import train_classifier
from tgdd_bench.flops import distill_work, traced  # benchmarks/ is on sys.path when this runs as a script


@dataclass(frozen=True)
class TinyCase:
    """The shared inputs of the correctness check: every pass reads them and must leave them as they are
    (on the CPU, ``.to("cpu")`` returns the very tensor, so a pass that marked its input as requiring grad
    would hand the next pass a tensor that carries a graph and a ``.grad``)."""

    extractor: nn.Module
    expert: nn.Module
    real: torch.Tensor
    syn: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    drawn: DrawnAugmentation


def tiny_case(seed: int = 0) -> TinyCase:
    """Two ConvNet-3 at 32 px, 32 real and 8 synthetic images, and one drawn DSA parameter set."""
    torch.manual_seed(seed)
    extractor = build_model("convnet-3", 3, 32, 10).eval()
    expert = build_model("convnet-3", 3, 32, 10).eval()
    gen = torch.Generator().manual_seed(seed)
    real = torch.rand(32, 3, 32, 32, generator=gen)
    syn = torch.rand(8, 3, 32, 32, generator=gen)
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])
    drawn = DiffAugment("color_crop_cutout_scale_rotate", "dsa-all").draw(1, torch.Generator().manual_seed(1), "cpu")
    return TinyCase(extractor, expert, real, syn, mean, std, drawn)


def run_pass(case: TinyCase, device: torch.device) -> list[torch.Tensor]:
    """Features, augmented images, loss and image gradient of one TGDD class step on ``device``.

    The pass works on its own copies: frozen deep copies of the networks and, for the synthetic images,
    a fresh leaf (``detach`` + copying ``to``), so its gradient lands in ``.grad`` on every device and the
    case is the same for the next pass."""
    ext = copy.deepcopy(case.extractor).to(device).requires_grad_(False)
    exp = copy.deepcopy(case.expert).to(device).requires_grad_(False)
    syn = case.syn.detach().to(device, copy=True).requires_grad_(True)
    real = case.real.detach().to(device, copy=True)
    mean, std = case.mean.to(device, copy=True), case.std.to(device, copy=True)
    aug = DrawnAugmentation(case.drawn.transforms, tuple(v.detach().to(device, copy=True) for v in case.drawn.values))
    r = aug(normalize(real, mean, std))
    a = aug(normalize(syn, mean, std))
    loss, _, _ = class_loss(ext, exp, r, a, 3, 2.5)
    loss.backward()
    assert syn.grad is not None, "the synthetic images are a leaf of this pass"
    return [x.detach().to("cpu", copy=True) for x in (ext.features(r), a, loss, syn.grad)]  # copies: no aliasing


def check_correctness(device: torch.device) -> list[tuple[str, float, float]]:
    """(what, max abs difference, tolerance) for forward features, DSA, loss and image gradient: a CPU pass
    against a pass on ``device`` from the same inputs (``device`` = cpu: a repeat, which must agree)."""
    case = tiny_case()
    cpu, other = run_pass(case, torch.device("cpu")), run_pass(case, device)
    names = ["features", "augmented images", "loss", "image gradient"]
    rows = []
    for name, a, b in zip(names, cpu, other, strict=True):
        scale = float(a.abs().max()) or 1.0
        rows.append((name, float((a - b).abs().max()), 1e-3 * scale))
    return rows


def iteration_flops(classes: int, ipc: int) -> float:
    """Conv/Linear FLOPs of one iteration of :func:`time_iteration` (the benchmarks' FLOP count, tgdd_bench.flops)."""
    features, forward, _ = traced("convnet-3", get_dataset("cifar100" if classes == 100 else "cifar10"))
    return sum(w.flops for w in distill_work(features, forward, 128, ipc * 4, classes, batched=True))


def time_iteration(device: torch.device, classes: int, ipc: int, batched: bool, repeats: int = 5) -> float:
    """Seconds per TGDD-like iteration (real 128 per class, f=2 decoded synthetic) on random data."""
    extractor = build_model("convnet-3", 3, 32, classes).to(device).eval().requires_grad_(False)
    expert = build_model("convnet-3", 3, 32, classes).to(device).eval().requires_grad_(False)
    real = torch.rand(classes, 128, 3, 32, 32, device=device)
    images = torch.rand(classes, ipc * 4, 3, 32, 32, device=device, requires_grad=True)
    opt = torch.optim.SGD([images], lr=0.1, momentum=0.5)

    def step():
        if batched:
            fr = extractor.features(real.flatten(0, 1)).view(classes, 128, -1).mean(1)
            fs = extractor.features(images.flatten(0, 1)).view(classes, ipc * 4, -1).mean(1)
            labels = torch.arange(classes, device=device).repeat_interleave(ipc * 4)
            loss = (fr - fs).pow(2).sum() + 2.5 * torch.nn.functional.cross_entropy(
                expert(images.flatten(0, 1)), labels
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            for c in range(classes):
                loss, _, _ = class_loss(extractor, expert, real[c], images[c], c, 2.5)
                opt.zero_grad()
                loss.backward()
                opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def correctness_lines(device: torch.device) -> tuple[list[str], bool]:
    """The correctness section (Markdown) and whether every quantity is within its tolerance."""
    against = "CUDA vs CPU" if device.type == "cuda" else "CPU vs a second CPU pass (no CUDA device)"
    lines = [f"## {against} on a tiny case", "", "| quantity | max abs diff | tolerance | ok |", "|---|---|---|---|"]
    ok = True
    for what, diff, tol in check_correctness(device):
        ok &= diff <= tol
        lines.append(f"| {what} | {diff:.2e} | {tol:.2e} | {'yes' if diff <= tol else 'NO'} |")
    return lines, ok


def timing_lines(device: torch.device) -> list[str]:
    """Seconds per iteration, per-class and batched, and the achieved rate (Markdown)."""
    lines = ["## Seconds per iteration (ConvNet-3, 32 px, 128 real/class, f=2)", ""]
    lines += [
        "| classes | IPC | per-class | batched | speed-up | achieved TFLOP/s (batched) |",
        "|---|---|---|---|---|---|",
    ]
    for classes, ipc in ((10, 1), (10, 10), (10, 50), (100, 10)):
        per_class = time_iteration(device, classes, ipc, batched=False)
        batched = time_iteration(device, classes, ipc, batched=True)
        rate = iteration_flops(classes, ipc) / batched / 1e12
        lines.append(
            f"| {classes} | {ipc} | {per_class:.4f} | {batched:.4f} | {per_class / batched:.1f}x | {rate:.2f} |"
        )
    lines += ["", "The achieved rate is what `benchmarks/gpu_budget.py --tflops RATE` converts FLOPs into hours with."]
    lines += ["", f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"]
    return lines


def stacked_training(
    device: torch.device, k: int, n: int, epochs: int, separate: bool, graphs: GraphChoice = "never"
) -> tuple[list[nn.Module], float]:
    """``k`` ConvNet-3 (32 px) trained on ``n`` random images for ``epochs`` under the ``tgdd``
    protocol (DSA per image, CutMix), stacked (:func:`tgdd.stacked.train_stacked`, its step
    replayed from CUDA graphs under ``graphs``) or one after another; the networks and the seconds
    it took."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 32, 32, generator=gen).to(device)
    labels = (torch.arange(n) % 10).to(device)
    settings = replace(PROTOCOLS.get("tgdd").train, epochs=epochs, batch_size=64)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    models = []
    for i in range(k):
        with seeded_init(i):
            models.append(build_model("convnet-3", 3, 32, 10).to(device))
    gens = [generator(i, "batches", device=device) for i in range(k)]
    rngs = [numpy_rng(i, "cutmix") for i in range(k)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    if separate:
        for model, g, rng in zip(models, gens, rngs, strict=True):
            train_classifier(model, images, labels, settings, mean, std, g, rng)
    else:
        backend = graph_backend(graphs, device, f"gpu_check {k} stacked")
        train_stacked(models, images, labels, settings, mean, std, gens, rngs, graphs=backend)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return models, time.perf_counter() - start


def largest_difference(one: list[nn.Module], other: list[nn.Module]) -> float:
    """The largest absolute difference of any parameter or buffer between two lists of networks."""
    return max(
        float((a.state_dict()[name] - value).abs().max())
        for a, b in zip(other, one, strict=True)
        for name, value in b.state_dict().items()
    )


def stacked_lines(device: torch.device, timing: bool) -> tuple[list[str], bool]:
    """Stacked against separate training on ``device`` (same device, so the same random streams),
    and the stacked step replayed from CUDA graphs (tgdd.graphs) against it run eagerly: the
    largest weight difference after a short training, and (``timing``) milliseconds per
    network-step at K = 1 and K = 5 (issue 21's target: <= 1.2 ms at K = 5 with augmentation)."""
    cuda = device.type == "cuda"
    epochs = 6 if cuda else 2  # on CUDA, enough steps for captures and replays (first lr step after epoch 4)
    separate, _ = stacked_training(device, 3, 256, epochs, separate=True)
    stacked, _ = stacked_training(device, 3, 256, epochs, separate=False)
    diff = largest_difference(separate, stacked)
    ok = diff <= 1e-3
    lines = ["## Stacked networks (tgdd.stacked) against separate runs, graphed (tgdd.graphs) against eager", ""]
    lines += [f"3 x ConvNet-3, 256 images, {epochs} epochs, protocol tgdd: max weight difference {diff:.2e} "
              f"(tolerance 1.0e-03): {'ok' if ok else 'NO'}", ""]  # fmt: skip
    if cuda:
        graphed, _ = stacked_training(device, 3, 256, epochs, separate=False, graphs="always")
        graph_diff = largest_difference(stacked, graphed)
        ok &= graph_diff <= 1e-3
        lines += [f"the same, stacked with its step replayed from CUDA graphs against stacked eager: max weight "
                  f"difference {graph_diff:.2e} (tolerance 1.0e-03): {'ok' if graph_diff <= 1e-3 else 'NO'}", ""]  # fmt: skip
    else:
        lines += ["CUDA graphs: skipped (no CUDA device; tests/test_graphs.py checks their bookkeeping on the CPU)", ""]
    if timing:
        steps = 2 * 1024 // 64
        _, one = stacked_training(device, 1, 1024, 2, separate=True)
        _, five = stacked_training(device, 5, 1024, 2, separate=False)
        _, five_graphed = stacked_training(device, 5, 1024, 2, separate=False, graphs="always")
        lines += ["| networks | training | ms per network-step |", "|---|---|---|"]
        lines += [f"| 1 | separate | {1000 * one / steps:.2f} |", f"| 5 | stacked | {1000 * five / (5 * steps):.2f} |"]
        lines += [f"| 5 | stacked, CUDA graphs | {1000 * five_graphed / (5 * steps):.2f} |", ""]
    return lines, ok


DISTILL_TREE = {  # tests/conftest.py's TINY scale: the embedded digits, no network
    "seed": 0,
    "dataset": "digits",
    "experts": {"arch": "convnet-1-w16", "num_trajectories": 2, "epochs": 2},
    "distill": {"method": "tgdd", "batched_classes": True, "checkpoint_every": 0},
    "tracking": {"enabled": False},
}


def distill_scale(cuda: bool) -> tuple[int, int]:
    """(iterations, IPC): on CUDA past the graphs' warm-up (tgdd.graphs.WARMUP_STEPS) with most
    iterations replayed; on the CPU a rehearsal (``always`` runs eagerly there)."""
    return (50, 10) if cuda else (6, 2)


def distill_runs(device: torch.device, root: Path) -> dict[str, SyntheticSet]:
    """The synthetic sets of TGDD on digits distilled in ``root`` on ``device`` (the config's ``device``,
    so the steps use that one), with ``distill.cuda_graphs`` never and always, from the same experts."""
    iterations, ipc = distill_scale(device.type == "cuda")
    tree = {
        **DISTILL_TREE,
        "device": str(device),
        "paths": {"data": str(root / "data"), "results": str(root / "results")},
    }
    cfg = build_config(tree, [f"distill.iterations={iterations}", f"distill.ipc={ipc}"])
    steps.prepare(cfg)
    steps.experts(cfg)
    runs = {}
    for choice in ("never", "always"):  # each set is read before the next run writes the same path
        (path,) = steps.distill(cfg.with_overrides(f"distill.cuda_graphs={choice}"))
        runs[choice] = load_synthetic(path)
    return runs


def replays(syn: SyntheticSet) -> int:
    """Iterations replayed from CUDA graphs (absent from ``meta["execution"]`` where none could be)."""
    return int(syn.meta.get("execution", {}).get("cuda_graph_replays", 0))


def ms_per_iteration(syn: SyntheticSet) -> float:
    """Milliseconds per iteration of iterations 2..n (tgdd.efficiency; warm-up and capture included)."""
    return 1000 * float(syn.meta["efficiency"]["seconds_per_iteration"])


def distill_graph_lines(device: torch.device) -> tuple[list[str], bool]:
    """The section "TGDD distillation, CUDA graphs vs eager" (Markdown) and whether it passed: on CUDA the
    images agree within 1e-4 * max|images| and the graphed run replayed; on the CPU (a rehearsal) they are
    bit-identical and neither run replayed."""
    cuda = device.type == "cuda"
    iterations, ipc = distill_scale(cuda)
    with tempfile.TemporaryDirectory(prefix="gpu_check_distill_") as tmp:
        runs = distill_runs(device, Path(tmp))
    eager, graphed = runs["never"], runs["always"]
    diff = float((graphed.images - eager.images).abs().max())
    tol = 1e-4 * float(eager.images.abs().max()) if cuda else 0.0
    counts = replays(eager), replays(graphed)
    ok = diff <= tol and counts[0] == 0 and (counts[1] > 0 if cuda else counts[1] == 0)
    if not cuda:
        ok &= torch.equal(graphed.images, eager.images)
    lines = ["## TGDD distillation, CUDA graphs vs eager", ""]
    lines += [f"digits, convnet-1-w16 experts (2 trajectories x 2 epochs), TGDD IPC {ipc}, batched classes, "
              f"{iterations} iterations on {device}: `distill.cuda_graphs=never` against `always`.", ""]  # fmt: skip
    if cuda:
        lines += ["Tolerance 1e-4 * max|images|: index_add's float atomics make CUDA runs nondeterministic, so "
                  "graphed and eager agree to about 1e-5 relative, not bit for bit.", ""]  # fmt: skip
    else:
        lines += ["CPU rehearsal: `always` runs eagerly without CUDA, so the runs must be bit-identical with 0 "
                  "replays.", ""]  # fmt: skip
    never_ms, always_ms = ms_per_iteration(eager), ms_per_iteration(graphed)
    lines += ["| run | cuda_graph_replays | ms per iteration |", "|---|---|---|"]
    lines += [
        f"| eager (never) | {counts[0]} | {never_ms:.2f} |",
        f"| graphed (always) | {counts[1]} | {always_ms:.2f} |",
    ]
    lines += ["", f"speed-up {never_ms / always_ms:.2f}x (ms per iteration: iterations 2..n, meta efficiency)"]
    same = "identical" if torch.equal(graphed.images, eager.images) else "not identical"
    lines += [f"max abs image difference {diff:.2e} (tolerance {tol:.1e}; {same}): {'ok' if ok else 'NO'}", ""]
    return lines, ok


def main() -> int:
    """0 when every check agrees (without CUDA: the CPU side ran and agreed, the GPU side skipped), 2 when not."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    lines = [f"# GPU check: {name}", "", f"torch {torch.__version__}, CUDA {torch.version.cuda}, {platform.node()}", ""]
    if not cuda:
        lines += ["GPU side skipped: no CUDA device. Only the CPU side ran (correctness against a repeat).", ""]
    correctness, ok = correctness_lines(device)
    lines += [*correctness, ""]
    stacked, stacked_ok = stacked_lines(device, timing=cuda)
    lines += stacked
    ok &= stacked_ok
    lines += timing_lines(device) if cuda else ["Timing skipped: no CUDA device.", ""]
    distilled, distill_ok = distill_graph_lines(device)  # after timing: a distillation resets the peak memory stats
    lines += distilled
    ok &= distill_ok
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"gpu_check_{name.replace(' ', '_')}.md").write_text(text)
    return 0 if ok else 2


if __name__ == "__main__":
    raise SystemExit(main())
