"""Real loaders on small files in the real on-disk formats, written here."""

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tgdd.data.formats import read_idx
from tgdd.data.prepared import ClassSampler, load_prepared, prepare_dataset
from tgdd.data.registry import LoadContext, get_dataset
from tgdd.errors import TgddError


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_mnist_like(root: Path, n_train=30, n_test=10, compress=True, seed=0) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress)
        data[split] = (images, labels)
    return data


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_round_trip(tmp_path, compress):
    data = write_mnist_like(tmp_path, compress=compress)
    spec = get_dataset("fashion_mnist")
    split = spec.loader(LoadContext((tmp_path,)), "train")
    assert split.images.shape == (30, 28, 28, 1)
    assert np.array_equal(split.images[..., 0], data["train"][0])
    assert np.array_equal(split.labels, data["train"][1].astype(np.int64))
    assert split.class_names[0] == "T-shirt/top"


def test_torchvision_raw_layout_is_found(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_mnist_like(raw, compress=False)
    split = get_dataset("mnist").loader(LoadContext((tmp_path,)), "test")
    assert split.images.shape == (10, 28, 28, 1)


def test_missing_files_say_where_they_looked(tmp_path):
    with pytest.raises(TgddError, match=r"missing train-images-idx3-ubyte.*looked in: .*" + str(tmp_path)):
        get_dataset("fashion_mnist").loader(LoadContext((tmp_path,)), "train")


def test_bad_magic_is_reported_with_the_file(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(TgddError, match=r"bad-idx is not an IDX file \(bad magic"):
        read_idx(path)


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_idx_is_reported(tmp_path, compress):
    path = write_idx(tmp_path / "images", np.zeros((5, 4, 4), np.uint8), compress)
    if compress:
        raw = gzip.decompress(path.read_bytes())[:-7]
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(TgddError, match="truncated"):
        read_idx(path)


def test_corrupt_gzip_is_reported(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(TgddError, match="cannot read IDX file .*train-images"):
        read_idx(path)


def test_label_count_mismatch(tmp_path):
    write_mnist_like(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8), compress=True)
    with pytest.raises(TgddError, match="30 images but .* 3 labels"):
        get_dataset("fashion_mnist").loader(LoadContext((tmp_path,)), "train")


def test_debian_fashion_mnist_if_installed():
    spec = get_dataset("fashion_mnist")
    if not (spec.system_dirs[0] / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    split = spec.loader(LoadContext(spec.system_dirs), "test")
    assert split.images.shape == (10000, 28, 28, 1)
    assert np.bincount(split.labels).tolist() == [1000] * 10


def test_digits_split_is_fixed_and_stratified():
    spec = get_dataset("digits")
    train = spec.loader(LoadContext(()), "train")
    test = spec.loader(LoadContext(()), "test")
    assert len(train.labels) + len(test.labels) == 1797
    assert len(test.labels) == 360
    assert np.array_equal(train.images, spec.loader(LoadContext(()), "train").images)
    assert np.bincount(test.labels).min() >= 35
    assert train.images.max() == 255


def test_prepare_writes_checksummed_files_at_network_resolution(tmp_path):
    write_mnist_like(tmp_path / "raw")
    spec = get_dataset("fashion_mnist")
    out = prepare_dataset(spec, LoadContext((tmp_path / "raw",)), tmp_path / "prepared")
    train = load_prepared(out, "train", "fashion_mnist")
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.mean.tolist() == pytest.approx([0.2861])
    # digits are upsampled from 8 to the documented 16 px
    digits = prepare_dataset(get_dataset("digits"), LoadContext(()), tmp_path / "digits")
    assert load_prepared(digits, "test", "digits").images.shape[-2:] == (16, 16)


def test_prepared_checksum_mismatch_and_wrong_dataset(tmp_path, prepared_root):
    src = prepared_root / "data" / "prepared" / "digits"
    dst = tmp_path / "digits"
    shutil.copytree(src, dst)
    with pytest.raises(TgddError, match="is for dataset 'digits', not 'mnist'"):
        load_prepared(dst, "train", "mnist")
    blob = bytearray((dst / "train.pt").read_bytes())
    blob[-100] ^= 0xFF
    (dst / "train.pt").write_bytes(bytes(blob))
    with pytest.raises(TgddError, match="fails its checksum"):
        load_prepared(dst, "train", "digits")
    with pytest.raises(TgddError, match="run `tgdd prepare` first"):
        load_prepared(tmp_path / "nothing", "train", "digits")


def test_class_sampler_draws_distinct_images_of_one_class(prepared_root):
    train = load_prepared(prepared_root / "data" / "prepared" / "digits", "train", "digits")
    sampler = ClassSampler(train, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    batch = sampler.sample(3, 20, gen)
    assert batch.shape == (20, 1, 16, 16) and batch.min() >= 0 and batch.max() <= 1
    pool = train.as_float()[train.labels == 3]
    matches = [(pool == img).flatten(1).all(1).nonzero().flatten().tolist() for img in batch]
    assert all(m for m in matches)
    assert len({m[0] for m in matches}) == 20
    assert len(sampler.sample(3, 10_000, gen)) == sampler.class_size(3)


def test_channel_stats_are_exact_and_independent_of_chunking_and_threads():
    from tgdd.data.prepared import _channel_stats

    images = torch.randint(0, 256, (300, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    reference = images.double() / 255
    mean, std = _channel_stats(images)
    assert mean == pytest.approx(reference.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
    assert std == pytest.approx(reference.std(dim=(0, 2, 3)).tolist(), abs=1e-12)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = _channel_stats(images, chunk=7)
        torch.set_num_threads(2)
        assert _channel_stats(images, chunk=300) == single == (mean, std)
    finally:
        torch.set_num_threads(threads)
