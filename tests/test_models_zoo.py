"""Every network of the registry at every resolution of the dataset registry.

Shapes of logits and features, feature dims that SPEC fixes, parameter counts of the
reference implementations (to catch wiring mistakes) and gradients reaching the images
(distribution matching optimises the images through ``features``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tgdd.errors import TgddError
from tgdd.models import EXACT, build_model, model_names
from tgdd.models.zoo import ZOO

FAMILY_NAMES = ["convnet-3", "convnet-4", "convnet-2-w32", "convnet-3-bn", "resnet10-ap", "resnet18-ap-bn"]
NAMES = [*ZOO, *FAMILY_NAMES]
SIZES = [8, 16, 28, 32, 64, 128]
CHANNELS = [1, 3]
NUM_CLASSES = 7

UNSUPPORTED = {("convnet-4", 8)}
"""ConvNet refuses depths that pool the image below 1 px, with a TgddError."""

INPUT_BLIND: set[tuple[str, int]] = set()
INPUT_BLIND_REASON = "resnet.py lets a stage reach 1 px, where instance norm outputs its bias whatever the input"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine more threads spin against each other (7x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_zoo_names_are_registered() -> None:
    assert set(ZOO) == set(EXACT) and set(EXACT) <= set(model_names())


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_logits_and_features_shapes(name: str, size: int, channels: int) -> None:
    if (name, size) in UNSUPPORTED:
        with pytest.raises(TgddError):
            build_model(name, channels, size, NUM_CLASSES)
        return
    model = build_model(name, channels, size, NUM_CLASSES).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, NUM_CLASSES)
        assert model.features(x).shape == (2, model.feature_dim)


@pytest.mark.parametrize("size", [8, 32])
@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_the_input(name: str, size: int, request: pytest.FixtureRequest) -> None:
    if (name, size) in UNSUPPORTED:
        pytest.skip("refused by design; checked in test_logits_and_features_shapes")
    if (name, size) in INPUT_BLIND:
        request.applymarker(pytest.mark.xfail(reason=INPUT_BLIND_REASON, strict=True))
    model = build_model(name, 3, size, NUM_CLASSES)
    x = torch.randn(2, 3, size, size, requires_grad=True)
    logits = model(x)
    (logits * torch.randn_like(logits)).sum().backward()
    assert x.grad is not None
    assert x.grad.abs().max() > 1e-3


def test_unknown_name_lists_choices_and_suggests() -> None:
    with pytest.raises(TgddError) as error:
        build_model("resnet19", 3, 32, 10)
    message = str(error.value)
    assert "Did you mean 'resnet1" in message
    assert all(name in message for name in ZOO)


@pytest.mark.parametrize(
    ("name", "channels", "size", "feature_dim"),
    [
        ("convnet-3", 3, 32, 2048),
        ("convnet-3", 1, 28, 2048),  # SPEC §4: 28 px is padded to act as 32 px
        ("convnet-5", 3, 128, 2048),
        ("resnet18", 3, 128, 512),
        ("densenet121", 3, 32, 1024),
        ("vgg11", 1, 28, 512),
        ("vgg11", 3, 8, 512),
        ("vgg11", 3, 64, 512 * 2 * 2),
        ("vgg11-bn", 3, 128, 512 * 4 * 4),
        ("alexnet", 1, 28, 192 * 4 * 4),  # DC's MNIST setting: padding 4 makes it 32 px
        ("alexnet", 3, 32, 192 * 4 * 4),
        ("alexnet", 3, 8, 192),
    ],
)
def test_feature_dims(name: str, channels: int, size: int, feature_dim: int) -> None:
    assert build_model(name, channels, size, 10).feature_dim == feature_dim


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("resnet18", 11_173_962),  # CIFAR ResNet-18 at 10 classes
        ("densenet121", 6_956_298),  # CIFAR DenseNet-121 at 10 classes
        ("vgg11", 9_231_114),  # CIFAR VGG-11 at 10 classes
    ],
)
def test_parameter_counts(name: str, reference: int) -> None:
    assert _params(build_model(name, 3, 32, 10)) == pytest.approx(reference, rel=0.01)


@pytest.mark.parametrize(
    ("name", "channels", "size"), [("convnet-3-bn", 3, 32), ("convnet-3", 1, 28), ("convnet-2-none-w8", 1, 16)]
)
def test_convnet_activations_are_each_blocks_post_relu_map_before_its_pool(name: str, channels: int, size: int) -> None:
    """ConvNet.activations: block b's conv -> norm -> ReLU output (what DataDAM's hooks on the ReLUs
    record), and features() of the same forward pass."""
    model = build_model(name, channels, size, NUM_CLASSES).train()
    x = torch.randn(4, channels, size, size)
    maps, features = model.activations(x)
    blocks = [model.body[i : i + 4] for i in range(0, len(model.body), 4)]  # conv, norm, relu, pool
    assert len(maps) == len(blocks) == int(name.split("-")[1])
    out, side = x, 32 if size == 28 else size
    for block, tapped in zip(blocks, maps, strict=True):
        expected = torch.relu(block[1](block[0](out)))
        assert tapped.shape == (4, 128 if "w8" not in name else 8, side, side)
        torch.testing.assert_close(tapped, expected)
        out, side = block[3](expected), side // 2
    torch.testing.assert_close(features, model.features(x))
    torch.testing.assert_close(features, out.flatten(1))
