"""Synthetic sets of other code bases in and out (tgdd.interchange): files written here in each
foreign format with torch, as those code bases write them; exact round trips; malformed files
refused with one line; an imported set evaluated and reported beside our own."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tgdd import paths
from tgdd.cli import INTERCHANGE_FORMATS, main
from tgdd.config import build_config
from tgdd.data.prepared import load_prepared
from tgdd.data.registry import get_dataset
from tgdd.errors import TgddError
from tgdd.interchange import FORMATS, SIDECAR, ImportOptions, export_synthetic, import_synthetic
from tgdd.synthetic import SyntheticSet, decode, load_synthetic, save_synthetic

from .conftest import TINY, tiny_config

K = 10  # digits classes


@pytest.fixture
def cfg(tmp_path, prepared_root):
    """Results in a fresh folder, the session's prepared digits (read only)."""
    return tiny_config(tmp_path, f"paths.data={prepared_root / 'data'}")


def _stats(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    manifest = json.loads((paths.prepared_dir(cfg) / "manifest.json").read_text())
    return (torch.tensor(manifest[key], dtype=torch.float32).view(1, -1, 1, 1) for key in ("mean", "std"))


def _real(cfg, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` training images of each class, class-major, in [0, 1]."""
    train = load_prepared(paths.prepared_dir(cfg), "train", "digits")
    idx = torch.cat([torch.nonzero(train.labels == c).flatten()[:per_class] for c in range(K)])
    return train.images[idx].float() / 255, torch.arange(K).repeat_interleave(per_class)


def _unclamped(cfg, per_class: int, noise: float = 0.03, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Real images moved as a last unclamped step would: values slightly outside [0, 1], exact 0s kept."""
    images, labels = _real(cfg, per_class)
    gen = torch.Generator().manual_seed(seed)
    moved = images + noise * torch.randn(images.shape, generator=gen)
    keep = torch.rand(images.shape, generator=gen) < 0.2
    return torch.where(keep, images, moved), labels


def _normalise(cfg, images: torch.Tensor) -> torch.Tensor:
    """As torchvision's Normalize does it: float32 ``(x - mean) / std``."""
    mean, std = _stats(cfg)
    return (images - mean) / std


def _our_set(cfg, method: str, ipc: int, factor: int) -> SyntheticSet:
    images, labels = _unclamped(cfg, ipc)
    meta = {"dataset": "digits", "method": method, "ipc": ipc, "factor": factor, "seed": cfg.seed, "num_classes": K}
    syn = SyntheticSet(images, labels, factor, meta)
    save_synthetic(paths.synthetic_file(cfg.with_overrides(f"distill.method={method}", f"distill.ipc={ipc}")), syn)
    return syn


def _imported(cfg, name: str, ipc: int) -> SyntheticSet:
    return load_synthetic(
        paths.synthetic_file(cfg.with_overrides(f"distill.method=imported-{name}", f"distill.ipc={ipc}"))
    )


def test_format_names_match_the_cli():
    assert tuple(FORMATS.names()) == INTERCHANGE_FORMATS


def test_other_code_bases_statistics_are_the_prepared_ones():
    """DC's utils.get_dataset and MTT's utils.get_dataset normalise with these constants (read from
    their code); tgdd prepares those data sets with the same ones, so undoing their normalisation
    with the prepared statistics is exact, except for MTT's CIFAR-100 (CIFAR-10's constants)."""
    dc = {
        "mnist": ((0.1307,), (0.3081,)),
        "fashion_mnist": ((0.2861,), (0.3530,)),
        "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
        "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
        "tinyimagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    }
    for name, (mean, std) in dc.items():
        spec = get_dataset(name)
        assert (spec.mean, spec.std) == (mean, std), name
        assert name not in FORMATS.get("dc").statistics
    mtt = FORMATS.get("mtt")
    assert set(mtt.statistics) == {"cifar100"} and mtt.statistics["cifar100"][:2] == dc["cifar10"]
    for name in ("tinyimagenet", "imagenette", "imagewoof"):  # MTT: ImageNet's mean/std
        assert (get_dataset(name).mean, get_dataset(name).std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_import_dc_result_file(cfg, tmp_path):
    """main.py's res_*.pt: {'data': [[images, labels]] per experiment, 'accs_all_exps': numpy floats}."""
    pixels, labels = _unclamped(cfg, 2, noise=0.1)  # DM optimises normalised images: overshoots more
    other, _ = _unclamped(cfg, 2, seed=1)
    res = tmp_path / "res_DM_digits_ConvNet_2ipc.pt"
    data = [[_normalise(cfg, pixels), labels], [_normalise(cfg, other), labels]]
    torch.save({"data": data, "accs_all_exps": {"ConvNet": [np.float64(0.91), np.float64(0.9)]}}, res)

    with pytest.raises(TgddError, match=r"holds 2 experiments' sets: choose one with --exp 0\.\.1"):
        import_synthetic(cfg, "dc", [res], ImportOptions())
    import_synthetic(cfg, "dc", [res], ImportOptions(experiment=0, source="DM, by hand"))
    syn = _imported(cfg, "dc", 2)
    assert torch.allclose(syn.images, pixels, atol=1e-6, rtol=0) and not torch.equal(syn.images, other)
    assert torch.equal(syn.labels, labels) and syn.factor == 1
    assert (syn.meta["method"], syn.meta["ipc"], syn.meta["inputs"]) == ("imported-dc", 2, {})
    origin = syn.meta["origin"]
    assert origin["format"] == "dc" and origin["experiment"] == 0 and origin["source"] == "DM, by hand"
    assert origin["normalisation"]["source"] == "prepared" and origin["exported_by_tgdd"] is None
    assert origin["files"]["result"]["sha256"] and "res_DM_digits_ConvNet_2ipc.pt" in origin["label"]


def test_import_idc_data_file_needs_its_factor(cfg, tmp_path):
    """TGDD.py's data_<it>.pt: [images in [0, 1], unclamped, before decoding; targets]."""
    pixels, labels = _unclamped(cfg, 1)
    assert pixels.min() < 0 and pixels.max() > 1
    data = tmp_path / "data_1000.pt"
    torch.save([pixels, labels], data)
    with pytest.raises(TgddError, match="before multi-formation decoding: give the factor"):
        import_synthetic(cfg, "idc", [data], ImportOptions())
    import_synthetic(cfg, "idc", [data], ImportOptions(factor=2, name="tgdd-authors"))
    syn = _imported(cfg, "tgdd-authors", 1)
    assert torch.equal(syn.images, pixels) and syn.factor == 2  # nothing to undo: exact
    assert syn.decoded()[0].shape == (K * 4, 1, 16, 16)


def test_import_idc_reorders_labels_to_class_major(cfg, tmp_path):
    pixels, labels = _unclamped(cfg, 2)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    data = tmp_path / "data.pt"
    torch.save([pixels[order], labels[order]], data)
    import_synthetic(cfg, "idc", [data], ImportOptions(factor=1))
    syn = _imported(cfg, "idc", 2)
    assert torch.equal(syn.labels, labels) and syn.meta["origin"]["reordered_to_class_major"]
    for c in range(K):  # the same images per class, in their file order
        assert torch.equal(syn.images[labels == c], pixels[order][labels[order] == c])


def test_import_mtt_pair_must_say_whether_it_is_whitened(cfg, tmp_path):
    pixels, labels = _unclamped(cfg, 1, noise=0.1)
    torch.save(_normalise(cfg, pixels).requires_grad_(), tmp_path / "images_best.pt")  # as distill.py saves it
    torch.save(labels, tmp_path / "labels_best.pt")
    files = [tmp_path / "images_best.pt", tmp_path / "labels_best.pt"]
    with pytest.raises(TgddError, match="may be ZCA-whitened .*--zca FILE .* or --no-zca"):
        import_synthetic(cfg, "mtt", files, ImportOptions())
    import_synthetic(cfg, "mtt", files, ImportOptions(no_zca=True))
    syn = _imported(cfg, "mtt", 1)
    assert torch.allclose(syn.images, pixels, atol=1e-6, rtol=0) and not syn.images.requires_grad


def _zca(images: torch.Tensor, eps: float = 0.1) -> dict[str, torch.Tensor]:
    """kornia's ZCAWhitening(eps=0.1, compute_inv=True).fit as MTT uses it, as a dict of its attributes."""
    flat = images.flatten(1).double()
    mean = flat.mean(0, keepdim=True)
    centred = flat - mean
    cov = centred.T @ centred / (len(flat) - 1)
    s, u = torch.linalg.eigh(cov)
    s = s.clamp_min(0)
    transform = u @ torch.diag((s + eps).rsqrt()) @ u.T
    inverse = u @ torch.diag((s + eps).sqrt()) @ u.T
    return {"mean_vector": mean.float(), "transform_matrix": transform.float(), "transform_inv": inverse.float()}


def test_import_mtt_zca_whitened_set(cfg, tmp_path):
    """MTT with --zca: [0, 1] images (no Normalize) whitened by the transform fitted on the training set."""
    train, _ = _real(cfg, 100)
    zca = _zca(train)
    torch.save(zca, tmp_path / "zca.pt")
    pixels, labels = _unclamped(cfg, 1)
    whitened = ((pixels.flatten(1) - zca["mean_vector"]) @ zca["transform_matrix"]).view_as(pixels)
    torch.save(whitened, tmp_path / "images_best.pt")
    torch.save(labels, tmp_path / "labels_best.pt")
    files = [tmp_path / "images_best.pt", tmp_path / "labels_best.pt"]
    import_synthetic(cfg, "mtt", files, ImportOptions(zca=tmp_path / "zca.pt", name="mtt-zca"))
    syn = _imported(cfg, "mtt-zca", 1)
    assert torch.allclose(syn.images, pixels, atol=1e-4, rtol=0)
    assert syn.meta["origin"]["normalisation"]["kind"] == "zca"
    torch.save({"mean_vector": zca["mean_vector"][:, :10]}, tmp_path / "bad_zca.pt")
    with pytest.raises(TgddError, match="must be a dict with 'mean_vector'"):
        import_synthetic(cfg, "mtt", files, ImportOptions(zca=tmp_path / "bad_zca.pt"))
    torch.save({**zca, "mean_vector": zca["mean_vector"][:, :10]}, tmp_path / "bad_zca.pt")
    with pytest.raises(TgddError, match="is for 10 values per image, the images have 256"):
        import_synthetic(cfg, "mtt", files, ImportOptions(zca=tmp_path / "bad_zca.pt"))


ROUND_TRIPS = [
    ("dc", {}, "dm", 1),
    ("dc", {}, "tgdd", 2),
    ("idc", {"factor": 2}, "tgdd", 2),
    ("idc", {"factor": 1}, "dm", 1),
    ("mtt", {"no_zca": True}, "dm", 1),
    ("mtt", {"no_zca": True}, "tgdd", 2),
]


@pytest.mark.parametrize(("fmt", "options", "method", "factor"), ROUND_TRIPS)
def test_ours_theirs_ours_is_bit_identical(cfg, fmt, options, method, factor):
    ours = _our_set(cfg, method, 2, factor)
    source = cfg.with_overrides(f"distill.method={method}", "distill.ipc=2")
    written = export_synthetic(source, fmt)
    foreign = [p for p in written if p.name != SIDECAR]
    assert written[-1].name == SIDECAR and foreign[0].parent == paths.export_dir(source, fmt)

    # the files are what the other code base reads, as it would have written them
    decoded = decode(ours.images, factor)
    stored = ours.images if fmt == "idc" else _normalise(cfg, decoded)
    labels = ours.labels if fmt == "idc" else ours.labels.repeat_interleave(factor * factor)
    blobs = [torch.load(p, weights_only=True) for p in foreign]
    images_out, labels_out = {"dc": lambda: blobs[0]["data"][0], "idc": lambda: blobs[0], "mtt": lambda: blobs}[fmt]()
    assert images_out.dtype == torch.float32 and torch.equal(labels_out, labels)
    assert torch.allclose(images_out, stored, atol=1e-5, rtol=0)

    import_synthetic(cfg, fmt, foreign, ImportOptions(name="back", **options))
    back = _imported(cfg, "back", 2)
    assert torch.equal(back.images, ours.images) and torch.equal(back.labels, ours.labels)
    assert back.factor == factor and back.meta["origin"]["exported_by_tgdd"]["method"] == method

    # without the record beside them the files are converted from their own values: close, not exact
    (foreign[0].parent / SIDECAR).unlink()
    import_synthetic(cfg, fmt, foreign, ImportOptions(name="plain", **options))
    plain = _imported(cfg, "plain", 2 * factor * factor if fmt != "idc" else 2)
    assert torch.allclose(plain.decoded()[0], decoded, atol=2e-7, rtol=0)
    if fmt != "idc":
        assert plain.factor == 1 and not torch.equal(plain.images, decoded)  # float32 cannot hold them exactly


def test_a_record_that_does_not_match_is_ignored(cfg):
    _our_set(cfg, "dm", 1, 1)
    source = cfg.with_overrides("distill.method=dm", "distill.ipc=1")
    written = export_synthetic(source, "mtt")
    images = torch.load(written[0], weights_only=True)
    images[0, 0, 0, 0] += 0.5
    torch.save(images, written[0])  # changed after the export: the record no longer names it
    import_synthetic(cfg, "mtt", written[:2], ImportOptions(no_zca=True))
    assert _imported(cfg, "mtt", 1).meta["origin"]["exported_by_tgdd"] is None


def test_export_with_zca_round_trips(cfg, tmp_path):
    train, _ = _real(cfg, 100)
    torch.save(_zca(train), tmp_path / "zca.pt")
    ours = _our_set(cfg, "dm", 1, 1)
    source = cfg.with_overrides("distill.method=dm", "distill.ipc=1")
    written = export_synthetic(source, "mtt", zca=tmp_path / "zca.pt")
    import_synthetic(cfg, "mtt", written[:2], ImportOptions(zca=tmp_path / "zca.pt"))
    assert torch.equal(_imported(cfg, "mtt", 1).images, ours.images)
    with pytest.raises(TgddError, match="never ZCA-whitened"):
        export_synthetic(source, "dc", zca=tmp_path / "zca.pt")


def test_unclamped_sets_pass_the_range_rule(cfg, tmp_path):
    """DM's sets (optimised in normalised space, never clamped) overshoot [0, 1] on many pixels."""
    pixels, labels = _unclamped(cfg, 2, noise=0.25)
    assert (pixels < 0).float().mean() > 0.15 and pixels.min() < -0.6 and pixels.max() > 1.5
    torch.save({"data": [[_normalise(cfg, pixels), labels]]}, tmp_path / "res.pt")
    import_synthetic(cfg, "dc", [tmp_path / "res.pt"], ImportOptions())
    assert torch.allclose(_imported(cfg, "dc", 2).images, pixels, atol=1e-6, rtol=0)


def _malformed(cfg, tmp_path):
    """(format, files, options, expected message) for each kind of bad input, written here."""
    pixels, labels = _unclamped(cfg, 1)
    normalised = _normalise(cfg, pixels)

    cases = iter(range(100))

    def save(name, obj, folder=None):
        folder = folder or tmp_path / f"case{next(cases)}"
        folder.mkdir(exist_ok=True)
        torch.save(obj, folder / name)
        return folder / name

    def mtt(images, labels_=labels):
        folder = tmp_path / f"case{next(cases)}"
        return [save("images_best.pt", images, folder), save("labels_best.pt", labels_, folder)]

    (tmp_path / "garbage.pt").write_bytes(b"not a torch file at all")
    return [
        (
            "idc",
            [save("a.pt", [pixels[:, 0], labels])],
            {"factor": 1},
            r"shape \[10, 16, 16\], expected \[N, C, H, W\]",
        ),
        ("idc", [save("a.pt", [pixels.expand(-1, 3, -1, -1), labels])], {"factor": 1}, "are 3x16x16 .*is 1x16x16"),
        ("idc", [save("a.pt", [pixels[..., :8], labels])], {"factor": 1}, "are 1x16x8 .*is 1x16x16"),
        ("idc", [save("a.pt", [(pixels * 255).to(torch.uint8), labels])], {"factor": 1}, "uint8, not floats"),
        ("idc", [save("a.pt", [pixels, labels + 1])], {"factor": 1}, r"labels range over 1\.\.10, .* 0\.\.9"),
        ("idc", [save("a.pt", [pixels, labels - 1])], {"factor": 1}, r"labels range over -1\.\.8"),
        ("idc", [save("a.pt", [pixels, labels[:-1]])], {"factor": 1}, r"labels have shape \[9\], expected \[10\]"),
        ("idc", [save("a.pt", [pixels, labels.clamp(max=8)])], {"factor": 1}, "classes hold 0 to 2 images"),
        ("idc", [save("a.pt", [pixels, labels.float()])], {"factor": 1}, "labels are torch.float32"),
        ("idc", [save("a.pt", [pixels * 255, labels])], {"factor": 1}, r"outside \[-2, 3\] .*0\.\.255 data"),
        ("idc", [save("a.pt", [normalised, labels])], {"factor": 1}, "below -0.25 .*normalised images given as pixels"),
        ("idc", [save("a.pt", [pixels.masked_fill(pixels > 0.9, math.nan), labels])], {"factor": 1}, "NaN or Inf"),
        ("idc", [save("a.pt", {"data": pixels})], {"factor": 1}, "is not an .images, labels. pair of tensors"),
        ("idc", [save("a.pt", [pixels, labels])], {"factor": 0}, "--factor must be >= 1"),
        ("dc", [save("res.pt", {"data": [[pixels, labels]]})], {}, "as in .0, 1. pixel images, not normalised"),
        ("dc", [save("res.pt", {"data": [[normalised * 255, labels]]})], {}, "outside .-2, 3. .*0..255 data"),
        ("dc", [save("res.pt", {"images": normalised})], {}, "lacks its 'data' list"),
        ("dc", [save("res.pt", {"data": [[normalised, labels]]})], {"experiment": 1}, r"--exp 1 is not in 0\.\.0"),
        ("dc", [save("res.pt", {"data": [[normalised, labels]]})], {"factor": 2}, "--factor applies to idc"),
        ("mtt", mtt(normalised, torch.eye(K)[labels]), {"no_zca": True}, r"labels are soft \(\[10, 10\]"),
        ("mtt", mtt({"images": normalised}), {"no_zca": True}, "holds a dict, not a tensor"),
        ("mtt", mtt(normalised)[:1], {"no_zca": True}, r"takes 2 file\(s\) \(images and labels\), got 1"),
        ("idc", [save("a.pt", [pixels, labels])], {"factor": 1, "no_zca": True}, "never ZCA-whitened"),
        ("idc", [save("a.pt", {"x": Path("x")})], {"factor": 1}, "would run code from it"),
        ("idc", [tmp_path / "garbage.pt"], {"factor": 1}, "is corrupt or not a torch file"),
        ("idc", [tmp_path / "missing.pt"], {"factor": 1}, "does not exist"),
        ("dc", [save("res.pt", {"data": [[normalised, labels]]})], {"name": "bad name"}, "an imported set's name is"),
    ]


def test_malformed_files_are_refused_with_one_line(cfg, tmp_path):
    cases = _malformed(cfg, tmp_path)
    for fmt, files, options, message in cases:
        with pytest.raises(TgddError, match=message) as caught:
            import_synthetic(cfg, fmt, files, ImportOptions(**options))
        assert "\n" not in str(caught.value), message
    assert not (cfg.paths.results / "synthetic").exists()  # nothing written by any of them


def test_refused_data_set_and_unknown_format(cfg, tmp_path):
    torch.save(torch.zeros(1), tmp_path / "x.pt")
    fruit = tiny_config(tmp_path, "dataset=imagefruit")
    with pytest.raises(TgddError, match="Granny Smith"):
        import_synthetic(fruit, "mtt", [tmp_path / "x.pt"] * 2, ImportOptions(no_zca=True))
    with pytest.raises(TgddError, match="unknown synthetic-set format 'mt'. Did you mean 'mtt'"):
        import_synthetic(cfg, "mt", [tmp_path / "x.pt"], ImportOptions())


def test_imported_method_names_in_the_config(tmp_path):
    assert tiny_config(tmp_path, "distill.method=imported-mtt-cifar10").distill.method == "imported-mtt-cifar10"
    with pytest.raises(TgddError, match="unknown method 'imported-x'"):
        tiny_config(tmp_path, "matrix.methods=[tgdd,imported-x]")  # the matrix distills: ours only
    with pytest.raises(TgddError, match="an imported set's name is imported-<name>"):
        tiny_config(tmp_path, "distill.method=imported-")


def _write_config(root: Path, prepared_root: Path) -> Path:
    tree = {**TINY, "paths": {"data": str(prepared_root / "data"), "results": str(root / "results")}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_imported_set_is_evaluated_and_reported_beside_ours(tmp_path, prepared_root, capsys):
    """The README's recipe: import a published set, evaluate it and one of ours under protocols
    tgdd and dc, one report."""
    config = _write_config(tmp_path, prepared_root)
    cfg = build_config(yaml.safe_load(config.read_text()))
    pixels, labels = _unclamped(cfg, 1)
    res = tmp_path / "res_DM_digits_ConvNet_1ipc.pt"
    torch.save({"data": [[_normalise(cfg, pixels), labels]], "accs_all_exps": {}}, res)
    args = ["--config", str(config), "-q"]
    assert main(["import-synthetic", "--format", "dc", str(res), *args, "--name", "dm-paper", "--source", "DM"]) == 0
    assert main(["distill", *args, "distill.method=random", "distill.ipc=1"]) == 0
    for method in ("imported-dm-paper", "random"):
        for protocol in ("tgdd", "dc"):
            cell = [f"distill.method={method}", "distill.ipc=1", f"evaluate.protocol={protocol}"]
            assert main(["evaluate", *args, *cell]) == 0
    assert main(["report", *args]) == 0

    imported_cfg = cfg.with_overrides("distill.method=imported-dm-paper", "distill.ipc=1")
    result = json.loads(paths.evaluation_file(imported_cfg, "convnet-1-w16").read_text())
    assert result["method"] == "imported-dm-paper" and result["origin"]["format"] == "dc" and result["runs"] == 2
    summary = (cfg.paths.results / "tables" / "summary.md").read_text()
    table = summary.split("### convnet-1-w16, protocol `dc`")[1].split("###")[0]
    assert "| imported-dm-paper |" in table and "| random " in table
    assert "### Imported synthetic sets" in summary and "res_DM_digits_ConvNet_1ipc.pt" in summary
    out = capsys.readouterr().out
    assert f"wrote {paths.synthetic_file(imported_cfg)}" in out


def test_evaluate_checks_an_imported_set_against_the_prepared_data(tmp_path, prepared_root, cfg):
    pixels, labels = _unclamped(cfg, 1)
    torch.save({"data": [[_normalise(cfg, pixels), labels]]}, tmp_path / "res.pt")
    import_synthetic(cfg, "dc", [tmp_path / "res.pt"], ImportOptions())

    shutil.copytree(prepared_root / "data", tmp_path / "data")
    manifest_path = tmp_path / "data" / "prepared" / "digits" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["mean"] = [0.5]  # as if digits had been prepared with other statistics since
    manifest_path.write_text(json.dumps(manifest))
    other = cfg.with_overrides(f"paths.data={tmp_path / 'data'}", "distill.ipc=1")
    from tgdd.evaluate import evaluate_synthetic

    with pytest.raises(TgddError, match="converted with the mean/std of another `tgdd prepare` of digits"):
        evaluate_synthetic(other.with_overrides("distill.method=imported-dc"), torch.device("cpu"), progress=False)
    assert not (cfg.paths.results / "eval").exists()


def test_cli_refusals_are_one_line(tmp_path, prepared_root, capsys):
    config = _write_config(tmp_path, prepared_root)
    torch.save(torch.zeros(10, 1, 16, 16), tmp_path / "images_best.pt")
    torch.save(torch.arange(10), tmp_path / "labels_best.pt")
    files = [str(tmp_path / "images_best.pt"), str(tmp_path / "labels_best.pt")]
    assert main(["import-synthetic", "--format", "mtt", *files, "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tgdd import-synthetic: error: format mtt may be ZCA-whitened") and "\n" not in err
    assert main(["export-synthetic", "--format", "idc", "--config", str(config), "distill.method=dm"]) == 2
    assert "no synthetic set at" in capsys.readouterr().err
