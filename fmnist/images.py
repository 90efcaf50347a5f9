"""Pictures of garments in, Fashion-MNIST images out: bytes in, tensors out (fmnist.files reads).

    image = decode(data, "shirt.jpg")   # uint8 (H, W) grey; DataError if it isn't a picture
    pixels = to_fashion_mnist(image)    # uint8 (28, 28): a light garment on a dark ground

`decode` reads PNG, JPEG and WebP (whatever torchvision.io decodes) of any size, grey or
colour, 8 or 16 bits, turned upright by its EXIF orientation, with transparency laid on
white. `to_fashion_mnist` redoes what Zalando did to its product photos to make the data
set: trim the edges of the ground's colour, scale the longest edge to 28 keeping the
aspect ratio (subsampling, bilinear and without antialiasing, as they did; they then
sharpened, which this skips), centre on a 28x28 canvas, negate. Fashion-MNIST garments
are light on a dark ground while a photo on paper is dark on light, so the negation
happens only when the picture's ground is light. The ground is then brought to 0, as in
the data set. A 28x28 picture is taken to be at the data set's size already: it is not
trimmed nor refitted, so a stored image (its ground at 0) comes back exactly.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from typing import Iterator

import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from fmnist.errors import DataError

SIZE = 28
# The data set's trimming threshold: an edge row or column is ground while all its
# pixels are within 5% of full intensity of the ground's level.
TRIM = 0.05 * 255


def decode(data: bytes, name: str) -> torch.Tensor:
    """A picture's bytes as uint8 (H, W) grey levels; DataError naming `name` otherwise."""
    if not data:
        raise DataError(f"{name}: the file is empty, expected a PNG, JPEG or WebP picture")
    try:
        with _decoder_messages() as said:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                 mode=ImageReadMode.UNCHANGED, apply_exif_orientation=True)
    except Exception as exc:  # noqa: BLE001 - the decoders report damage as RuntimeError or ValueError
        # torchvision's messages start with the C++ function, file and line: keep the words.
        reason = re.sub(r"^.*\.(?:cpp|h):\d+,\s*", "", " ".join(str(exc).split()))
        if reason.startswith("Unsupported image file"):
            reason = "its first bytes are not those of any of these formats"
        if said:  # libpng's own words say more than torchvision's "Internal error."
            reason = " ".join(said)
        raise DataError(f"{name}: not a readable PNG, JPEG or WebP picture ({reason[:200]})") from None
    if image.ndim == 4:  # an animated picture: its first frame
        image = image[0]
    if image.ndim != 3 or image.shape[0] not in (1, 2, 3, 4) or 0 in image.shape:
        raise DataError(f"{name}: a picture of shape {tuple(image.shape)}, expected grey or colour pixels")
    x = F.to_dtype(image, torch.float32, scale=True) * 255  # 16-bit PNGs too
    if x.shape[0] in (2, 4):  # transparency: laid on a white page, as a viewer shows it
        alpha = x[-1:] / 255
        x = x[:-1] * alpha + 255 * (1 - alpha)
    if x.shape[0] == 3:
        x = F.rgb_to_grayscale(x)
    return x[0].round().clamp(0, 255).to(torch.uint8)


@contextlib.contextmanager
def _decoder_messages() -> Iterator[list[str]]:
    """Collect what the C decoders print on stderr (libpng writes its errors there, without
    a newline) into the yielded list, so that a bad picture still costs one clean line."""
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(4000).decode(errors="replace")
            said.extend(" ".join(line.replace("libpng error:", "").split())
                        for line in text.splitlines() if line.strip())


def ground_level(image: torch.Tensor) -> float:
    """The ground's grey level: the median of the pixels on the picture's edge."""
    border = torch.cat([image[0], image[-1], image[:, 0], image[:, -1]])
    # quantile, not median(): it averages the two middle values, so a negated picture's
    # ground is exactly 255 minus the picture's, and negating first changes nothing.
    return float(border.float().quantile(0.5))


def is_dark_on_light(image: torch.Tensor) -> bool:
    """True for a garment darker than its ground (a photo on paper): it needs negating."""
    return ground_level(image) > 127.5


def _trim(x: torch.Tensor, ground: float) -> torch.Tensor:
    """Cut off the edge rows and columns that are all ground (nothing, for a blank picture)."""
    mask = (x - ground).abs() > TRIM
    if not mask.any():
        return x
    rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
    return x[int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]


def fit(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Scale (H, W) so that its longest edge is `size`, keeping the aspect ratio, and centre
    it on a `size` x `size` canvas of zeros. Float in, float out.

    Bilinear without antialiasing, close to the data set's subsampling: on test images
    enlarged onto bigger canvases the model scores about 2 points higher than after an
    antialiased (smoother) resize.
    """
    h, w = x.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.resize(x[None], [nh, nw], antialias=False)[0]
    canvas = torch.zeros(size, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = x
    return canvas


def to_fashion_mnist(image: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W) grey picture -> uint8 (28, 28) as the data set stores its images.

    Light garment on a dark ground (negated if the ground is light), trimmed to the
    garment, its ground brought to 0, fitted into 28x28 with its aspect ratio kept.
    A 28x28 picture is not trimmed nor refitted: that would move and rescale one of the
    data set's own images by a pixel or so (more than half of them), which costs accuracy.
    """
    x = image.float()
    ground = ground_level(image)
    if ground > 127.5:
        x, ground = 255 - x, 255 - ground
    at_size = tuple(image.shape) == (SIZE, SIZE)
    if not at_size:
        x = _trim(x, ground)
    # Stretch ground..255 to 0..255: the data set's ground is black, a page's is grey.
    x = ((x - ground) * (255 / (255 - ground))).clamp(0, 255)
    return (x if at_size else fit(x)).round().clamp(0, 255).to(torch.uint8)
