"""Loaders for CIFAR-10/100, SVHN, Tiny ImageNet and the ImageNet subsets, on small files
written in each dataset's real on-disk format."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tgdd.data import image_folders, torchvision_formats  # noqa: F401  (registers the datasets)
from tgdd.data.registry import LoadContext, RawSplit, get_dataset
from tgdd.errors import TgddError

RNG = np.random.default_rng(0)


def load(name: str, root: Path, split: str) -> RawSplit:
    return get_dataset(name).loader(LoadContext((root,)), split)


def random_images(n: int, height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- CIFAR


def write_pickle(path: Path, obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """NHWC images as CIFAR's rows of 3072 bytes in CHW order."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10(root: Path, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"class{i}".encode() for i in range(10)]
    write_pickle(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    all_images, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = random_images(per_batch, 32, 32)
        labels = RNG.integers(0, 10, size=per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"data": cifar_rows(images), b"labels": labels}
        write_pickle(folder / name, batch)
        all_images.append(images)
        all_labels.append(labels)
    return np.concatenate(all_images), np.concatenate(all_labels)


def test_cifar10_reads_batches_in_order_and_round_trips_pixels(tmp_path: Path) -> None:
    images, labels = write_cifar10(tmp_path)
    train = load("cifar10", tmp_path, "train")
    assert train.images.shape == (15, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(train.images, images[:15])
    np.testing.assert_array_equal(train.labels, labels[:15])
    assert train.class_names == [f"class{i}" for i in range(10)]
    test = load("cifar10", tmp_path, "test")
    np.testing.assert_array_equal(test.images, images[15:])
    np.testing.assert_array_equal(test.labels, labels[15:])


def test_cifar_reads_python2_style_pickles(tmp_path: Path) -> None:
    """The official files are Python 2 pickles: str keys and numpy.core module paths."""
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    images = random_images(2, 32, 32)
    legacy = pickle.dumps({"data": cifar_rows(images), "labels": [3, 9]}, protocol=2)
    legacy = legacy.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in legacy
    (folder / "test_batch").write_bytes(legacy)
    write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}, protocol=2)
    test = load("cifar10", folder, "test")  # the root may also be the batches folder itself
    np.testing.assert_array_equal(test.images, images)
    assert test.labels.tolist() == [3, 9]
    assert test.class_names[9] == "c9"


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    images = random_images(4, 32, 32)
    batch = {b"data": cifar_rows(images), b"fine_labels": [0, 42, 99, 7], b"coarse_labels": [0, 1, 2, 3]}
    write_pickle(folder / "test", batch)
    test = load("cifar100", tmp_path, "test")
    np.testing.assert_array_equal(test.images, images)
    assert test.labels.tolist() == [0, 42, 99, 7]
    assert len(test.class_names) == 100 and test.class_names[42] == "f42"


def test_cifar_missing_files_lists_where_it_looked(tmp_path: Path) -> None:
    other = tmp_path / "other"
    with pytest.raises(
        TgddError, match=r"cifar10: missing data_batch_1.*batches\.meta; looked in: .*cifar-10-batches-py"
    ):
        get_dataset("cifar10").loader(LoadContext((tmp_path, other)), "train")
    with pytest.raises(TgddError, match=str(other / "cifar-10-batches-py")):
        get_dataset("cifar10").loader(LoadContext((tmp_path, other)), "train")


def test_cifar_partial_copy_names_only_the_missing_batch(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(TgddError, match=r"missing data_batch_4; looked in"):
        load("cifar10", tmp_path, "train")


def test_cifar_corrupt_pickle_names_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(TgddError, match=r"data_batch_2: not a valid pickle"):
        load("cifar10", tmp_path, "train")


def test_cifar_refuses_pickles_that_name_arbitrary_callables(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": Path("x"), b"labels": []})
    with pytest.raises(TgddError, match=r"test_batch: not a valid pickle .*refusing to load global pathlib"):
        load("cifar10", tmp_path, "test")


def test_cifar_wrong_shape_and_bad_labels(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    test_batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    write_pickle(test_batch, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(TgddError, match=r"test_batch: 'data' must be uint8 \[N, 3072\]"):
        load("cifar10", tmp_path, "test")
    write_pickle(test_batch, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(TgddError, match=r"test_batch has labels outside 0\.\.9"):
        load("cifar10", tmp_path, "test")
    write_pickle(test_batch, {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(TgddError, match=r"test_batch has no 'labels' entry"):
        load("cifar10", tmp_path, "test")


# --------------------------------------------------------------------------- SVHN


def write_svhn(path: Path, images: np.ndarray, digits: list[int]) -> None:
    """SVHN format 2: X is HxWxCxN uint8, y is Nx1 with digit 0 stored as 10."""
    path.parent.mkdir(parents=True, exist_ok=True)
    y = np.array([[10 if d == 0 else d] for d in digits], dtype=np.uint8)
    scipy.io.savemat(str(path), {"X": images.transpose(1, 2, 3, 0), "y": y})


def test_svhn_reads_mat_and_maps_10_to_0(tmp_path: Path) -> None:
    images = random_images(5, 32, 32)
    write_svhn(tmp_path / "svhn" / "train_32x32.mat", images, [0, 1, 9, 0, 5])
    train = load("svhn", tmp_path, "train")
    assert train.images.shape == (5, 32, 32, 3) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images, images)
    assert train.labels.dtype == np.int64 and train.labels.tolist() == [0, 1, 9, 0, 5]
    assert train.class_names == [str(d) for d in range(10)]
    assert not get_dataset("svhn").flip


def test_svhn_missing_file_lists_both_places(tmp_path: Path) -> None:
    looked = f"{tmp_path}, {tmp_path / 'svhn'}"
    with pytest.raises(TgddError, match=rf"svhn: missing test_32x32\.mat; looked in: {re.escape(looked)}\."):
        load("svhn", tmp_path, "test")


def test_svhn_truncated_mat_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "test_32x32.mat"
    write_svhn(path, random_images(3, 32, 32), [1, 2, 3])
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(TgddError, match=r"test_32x32\.mat: not a readable \.mat file"):
        load("svhn", tmp_path, "test")


def test_svhn_wrong_shape_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "test_32x32.mat"
    scipy.io.savemat(str(path), {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(TgddError, match=r"test_32x32\.mat: 'X' must be uint8 \[32, 32, 3, N\]"):
        load("svhn", tmp_path, "test")
    scipy.io.savemat(str(path), {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]], np.uint8)})
    with pytest.raises(TgddError, match=r"test_32x32\.mat has labels outside 0\.\.9"):
        load("svhn", tmp_path, "test")


# --------------------------------------------------------------------------- Tiny ImageNet

TINY_WNIDS = ["n02124075", "n01443537", "n09246464"]  # deliberately not sorted in wnids.txt


def save_image(path: Path, pixels: np.ndarray, mode: str = "RGB", fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path, format=fmt)


def write_tiny(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A tiny-imagenet-200 tree. Train images are lossless (PNG bytes under .JPEG names, which
    PIL reads by content) so pixels can be compared exactly; val images are real JPEGs."""
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    (folder / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn02124075\tEgyptian cat\n")
    train = {}
    for wnid in TINY_WNIDS:
        train[wnid] = random_images(2, 64, 64)
        for i, pixels in enumerate(train[wnid]):
            save_image(folder / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", pixels)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    lines = []
    for i, wnid in enumerate(["n09246464", "n01443537", "n09246464"]):
        save_image(folder / "val" / "images" / f"val_{i}.JPEG", random_images(1, 64, 64)[0], fmt="JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder, train


def test_tinyimagenet_train_uses_sorted_wnids_and_round_trips(tmp_path: Path) -> None:
    _, train_pixels = write_tiny(tmp_path)
    train = load("tinyimagenet", tmp_path, "train")
    order = sorted(TINY_WNIDS)
    assert train.images.shape == (6, 64, 64, 3) and train.images.dtype == np.uint8
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert train.class_names == ["goldfish", "Egyptian cat", "n09246464"]
    np.testing.assert_array_equal(train.images, np.concatenate([train_pixels[w] for w in order]))
    spec = get_dataset("tinyimagenet")
    assert (spec.image_size, spec.num_classes, spec.channels) == (64, 200, 3)


def test_tinyimagenet_val_is_the_test_split_and_greyscale_becomes_rgb(tmp_path: Path) -> None:
    folder, _ = write_tiny(tmp_path)
    grey = RNG.integers(0, 256, size=(64, 64), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(folder / "val" / "images" / "val_1.JPEG", format="PNG")
    test = load("tinyimagenet", folder, "test")  # the root may be the tiny-imagenet-200 folder itself
    assert test.images.shape == (3, 64, 64, 3)
    assert test.labels.tolist() == [2, 0, 2]
    np.testing.assert_array_equal(test.images[1], np.repeat(grey[..., None], 3, axis=2))


def test_tinyimagenet_errors(tmp_path: Path) -> None:
    with pytest.raises(TgddError, match=r"tinyimagenet: missing wnids\.txt; looked in: .*tiny-imagenet-200"):
        load("tinyimagenet", tmp_path, "train")
    folder, _ = write_tiny(tmp_path)
    (folder / "val" / "images" / "val_2.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(TgddError, match=r"cannot read image .*val_2\.JPEG"):
        load("tinyimagenet", tmp_path, "test")
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(TgddError, match=r"val_annotations\.txt line 1"):
        load("tinyimagenet", tmp_path, "test")
    (folder / "wnids.txt").write_text("\n".join([*TINY_WNIDS, "n99999999"]))
    with pytest.raises(TgddError, match=r"missing class folder .*train/n99999999/images"):
        load("tinyimagenet", tmp_path, "train")


# --------------------------------------------------------------------------- ImageNet subsets

SUBSET_NAMES = ["imagenette", "imagewoof", "imagefruit", "imagemeow", "imagesquawk", "imageyellow"]


def test_subset_resource_matches_the_reference_and_specs() -> None:
    subsets = image_folders.imagenet_subsets()
    assert sorted(subsets) == sorted(SUBSET_NAMES)
    assert all(len(wnids) == 10 and len(set(wnids)) == 10 for wnids in subsets.values())
    reference = Path("/work/shared/reference/imagenet_subsets.json")
    if reference.is_file():
        expected = {k: v for k, v in json.loads(reference.read_text()).items() if not k.startswith("_")}
        assert subsets == expected
    for name in SUBSET_NAMES:
        spec = get_dataset(name)
        assert (spec.image_size, spec.num_classes, spec.channels) == (128, 10, 3)
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)


def write_imagenet(root: Path, wnids: list[str], split_dir: str, sizes: list[tuple[int, int]]) -> None:
    """ImageNet-style class folders with one real JPEG per (width, height) in ``sizes``."""
    for wnid in wnids:
        for i, (width, height) in enumerate(sizes):
            save_image(root / split_dir / wnid / f"{wnid}_{i}.JPEG", random_images(1, height, width)[0], fmt="JPEG")


def test_imagenet_subset_resizes_to_128_and_keeps_label_order(tmp_path: Path) -> None:
    wnids = image_folders.imagenet_subsets()["imagewoof"]
    write_imagenet(tmp_path / "imagenet", wnids, "val", [(200, 150), (90, 300), (128, 128)])
    write_imagenet(tmp_path / "imagenet", ["n01440764"], "val", [(64, 64)])  # other classes are ignored
    test = load("imagewoof", tmp_path, "test")
    assert test.images.shape == (30, 128, 128, 3) and test.images.dtype == np.uint8
    assert test.labels.tolist() == [label for label in range(10) for _ in range(3)]
    assert test.class_names == wnids


def test_resize_is_shorter_side_then_center_crop() -> None:
    """A 256x128 image whose columns encode x: the crop keeps the middle half, columns 64..191."""
    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (128, 1, 3))
    fitted = np.asarray(image_folders.fit_square(Image.fromarray(ramp), 128))
    assert fitted.shape == (128, 128, 3)
    np.testing.assert_array_equal(fitted, ramp[:, 64:192])
    halved = np.asarray(image_folders.fit_square(Image.fromarray(ramp), 64))  # 128x64, crop 32..95 of it
    assert halved.shape == (64, 64, 3)
    assert abs(int(halved[0, 0, 0]) - 64) <= 1 and abs(int(halved[0, -1, 0]) - 190) <= 1


def test_imagenet_subset_from_root_that_is_the_imagenet_folder(tmp_path: Path) -> None:
    wnids = image_folders.imagenet_subsets()["imagenette"]
    write_imagenet(tmp_path, wnids, "train", [(150, 140)])
    cmyk = tmp_path / "train" / wnids[0] / "cmyk.JPEG"
    Image.new("CMYK", (130, 160), (0, 0, 0, 0)).save(cmyk, format="JPEG")
    train = load("imagenette", tmp_path, "train")
    assert train.images.shape == (11, 128, 128, 3)
    assert train.labels.tolist() == [0, 0, *range(1, 10)]


def test_imagenet_subset_errors(tmp_path: Path) -> None:
    looked = re.escape(f"{tmp_path / 'imagenet'}, {tmp_path / 'imagefruit'}, {tmp_path}.")
    with pytest.raises(TgddError, match=rf"imagefruit: missing the folder val/<wnid>/; looked in: {looked}"):
        load("imagefruit", tmp_path, "test")
    wnids = image_folders.imagenet_subsets()["imagefruit"]
    write_imagenet(tmp_path / "imagenet", wnids[:3], "val", [(40, 30)])
    with pytest.raises(TgddError, match=rf"missing class folder .*val/{wnids[3]}"):
        load("imagefruit", tmp_path, "test")
    write_imagenet(tmp_path / "imagenet", wnids[3:], "val", [(40, 30)])
    (tmp_path / "imagenet" / "val" / wnids[5] / "broken.JPEG").write_bytes(b"garbage")
    with pytest.raises(TgddError, match=rf"cannot read image .*{wnids[5]}/broken\.JPEG"):
        load("imagefruit", tmp_path, "test")
