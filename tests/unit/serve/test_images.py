"""fmnist/serve/images.py: pictures in (PNG, JPEG, WebP) as 28x28 garments, light on dark.

Pictures are made from the tiny generated images of helpers.synthetic(): as stored
(light on dark), inverted (dark on light, as a photo on paper), enlarged onto a larger
canvas, and in colour.
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from fmnist.core.errors import DataError
from fmnist.serve.images import decode, is_dark_on_light, to_fashion_mnist
from helpers.data import synthetic
from helpers.pictures import jpeg, png, webp


def test_stored_pictures_decode_to_their_pixels_and_negatives_are_negated():
    images, _ = synthetic(3, 0)
    for image in torch.from_numpy(images):
        assert torch.equal(decode(png(image), "stored.png"), image)
        # Equal channels: the grey conversion's weights add up to 1, give or take rounding.
        assert (decode(png(image.expand(3, -1, -1).contiguous()), "grey.png").int() - image.int()).abs().max() <= 1
        assert not is_dark_on_light(image) and is_dark_on_light(255 - image)
        # A photo on paper ends up as the stored picture would: light on dark.
        assert torch.equal(to_fashion_mnist(255 - image), to_fashion_mnist(image))
        # One of the data set's own images (a black ground) comes back exactly, either way round.
        clean = torch.where(image < 60, 0, image).to(torch.uint8)
        assert torch.equal(to_fashion_mnist(clean), clean) and torch.equal(to_fashion_mnist(255 - clean), clean)
        lossy = to_fashion_mnist(decode(webp(255 - image), "inverted.webp"))
        assert (lossy.float() - to_fashion_mnist(image).float()).abs().mean() < 8


def test_a_garment_is_trimmed_and_fitted_into_28x28_keeping_its_aspect_ratio():
    for height, width, ground, garment in ((100, 50, 0, 200), (40, 120, 230, 20)):
        picture = torch.full((150, 200), ground, dtype=torch.uint8)
        picture[30:30 + height, 60:60 + width] = garment
        fitted = to_fashion_mnist(picture)
        assert fitted.shape == (28, 28) and fitted.dtype == torch.uint8
        lit = (fitted > 127).nonzero()
        rows, cols = lit[:, 0].max() - lit[:, 0].min() + 1, lit[:, 1].max() - lit[:, 1].min() + 1
        assert max(rows, cols) == 28
        assert abs(float(rows) / float(cols) - height / width) < 0.1, (rows, cols)
        assert fitted[lit[:, 0], lit[:, 1]].min() >= 200  # the garment is light, whatever its ground
        assert fitted.float().mean() < 255 / 2  # ... and the ground is dark


def test_transparency_lies_on_white_and_a_blank_picture_is_all_ground():
    rgba = torch.zeros(4, 60, 40, dtype=torch.uint8)  # transparent black ...
    rgba[:, 10:50, 10:30] = torch.tensor([40, 40, 40, 255], dtype=torch.uint8).view(4, 1, 1)  # ... round a dark garment
    buffer = io.BytesIO()  # torchvision's PNG encoder has no alpha channel; Pillow's has
    Image.fromarray(rgba.permute(1, 2, 0).numpy(), mode="RGBA").save(buffer, format="PNG")
    fitted = to_fashion_mnist(decode(buffer.getvalue(), "cutout.png"))
    assert fitted[14, 14] > 200 and fitted[0, 0] == 0
    assert torch.equal(to_fashion_mnist(torch.full((30, 30), 180, dtype=torch.uint8)),
                       torch.zeros(28, 28, dtype=torch.uint8))


@pytest.mark.parametrize("data, message", [
    (b"", "the file is empty"),
    (b"GIF89a... not really", "not a readable PNG, JPEG, WebP, GIF, BMP or TIFF picture"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a readable PNG, JPEG, WebP, GIF, BMP or TIFF picture"),
])
def test_bad_pictures_are_a_data_error_naming_the_file(data, message):
    with pytest.raises(DataError, match=message) as error:
        decode(data, "pics/bad.png")
    assert str(error.value).startswith("pics/bad.png: ") and "\n" not in str(error.value)


def test_truncated_pictures_are_a_data_error():
    image = torch.from_numpy(synthetic(1, 0)[0][0])
    for data in (png(image), jpeg(image), webp(image)):
        with pytest.raises(DataError, match="not a readable"):
            decode(data[:len(data) // 2], "half")
