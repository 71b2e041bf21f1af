import numpy as np
import pytest
import torch

from tgdd.synthetic import decode, decode_labels, image_grid, save_grid, tile


def test_decode_cuts_tiles_and_upsamples_each():
    img = torch.zeros(1, 1, 4, 4)
    img[0, 0, :2, :2], img[0, 0, :2, 2:], img[0, 0, 2:, :2], img[0, 0, 2:, 2:] = 1, 2, 3, 4
    out = decode(img, 2)
    assert out.shape == (4, 1, 4, 4)
    for k, value in enumerate([1, 2, 3, 4]):
        assert torch.allclose(out[k], torch.full((1, 4, 4), float(value)))


def test_decode_factor_one_is_identity_and_shapes_scale():
    x = torch.rand(6, 3, 32, 32)
    assert decode(x, 1) is x
    assert decode(x, 3).shape == (54, 3, 32, 32)  # 32 % 3 != 0: padded tiles
    assert decode_labels(torch.tensor([0, 1]), 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_decode_equals_a_direct_crop_and_resize():
    x = torch.rand(2, 3, 8, 8)
    out = decode(x, 2)
    expected = torch.nn.functional.interpolate(x[1:2, :, 4:8, 0:4], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(out[4 + 2], expected[0])  # image 1, tile (row 1, col 0)


def test_tile_then_decode_recovers_constant_images_in_the_authors_layout():
    """Tile k of stored image m is input image k*n + m (IDC's ``mix``), so decoding returns the
    inputs tile-major per stored image."""
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 8, 8).contiguous()
    tiled = tile(x, 2)
    assert tiled.shape == (2, 1, 8, 8)
    n = 2
    expected = torch.stack([x[k * n + m] for m in range(n) for k in range(4)])
    assert torch.allclose(decode(tiled, 2), expected)


@pytest.mark.parametrize(("n", "nrow", "channels"), [(10, 10, 1), (7, 3, 3), (20, 10, 1), (2, 10, 3)])
def test_image_grid_matches_torchvision_make_grid(n, nrow, channels):
    from torchvision.utils import make_grid

    images = torch.rand(n, channels, 8, 6, generator=torch.Generator().manual_seed(n))
    assert torch.equal(image_grid(images, nrow=nrow), make_grid(images, nrow=nrow, padding=2))


def test_save_grid_writes_the_pixels_torchvision_would(tmp_path):
    from PIL import Image
    from torchvision.utils import save_image

    images = torch.rand(3 * 2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    save_grid(tmp_path / "grid.png", images, ipc=2)
    upsampled = torch.nn.functional.interpolate(images, scale_factor=4, mode="nearest")
    save_image(upsampled, str(tmp_path / "reference.png"), nrow=2, padding=2, format="png")
    ours = np.asarray(Image.open(tmp_path / "grid.png"))
    reference = np.asarray(Image.open(tmp_path / "reference.png"))
    assert ours.shape == (3 * 66 + 2, 2 * 66 + 2, 3)
    assert np.array_equal(ours, reference)
