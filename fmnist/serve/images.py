"""Pictures of garments in, Fashion-MNIST images out: a file or bytes in, tensors out.

    with open_bounded(path, hint, MAX_FILE_BYTES, PICTURE_WHAT) as stream:   # fmnist.core.io
        image = decode(stream, str(path))   # uint8 (H, W) grey; DataError if it isn't a picture
    image = decode(data, "shirt.jpg")       # bytes work too
    pixels = to_fashion_mnist(image)        # uint8 (28, 28): a light garment on a dark ground

`decode` reads PNG, JPEG, WebP, GIF, BMP and TIFF with Pillow, grey or colour (palette,
CMYK), 8 or 16 bits, turned upright by its EXIF orientation, with transparency laid on
white; an animated picture gives its first frame. Other formats, and pixel kinds such as
32-bit or floating-point TIFF, are refused in one line that names them.

Bounded: the size a picture declares in its header is checked before any pixel is
decoded, and a picture of more than MAX_PIXELS is refused, naming the limit. Within it,
a JPEG is decoded in grey and at a reduced scale (libjpeg's DCT scaling, Pillow's
`draft`), other formats at full size in their own mode, and the picture is brought to
grey and down to at most WORK pixels on its long edge a strip at a time (box averaging,
Pillow's `reduce`). A picture at most WORK pixels across is decoded whole, pixel for
pixel. Peak memory is then the decoded picture and one strip: bench/pictures.py
measures it (`python bench/pictures.py`; its figures are in docs/model.md, "Pictures in").
Pillow's own messages (DecompressionBombWarning, EXIF warnings) and what the C
decoders print on stderr never reach the terminal: a bad picture costs one line.

`to_fashion_mnist` redoes what Zalando did to its product photos to make the data
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
import io
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fmnist.core.dataset import SIZE
from fmnist.core.errors import DataError, one_line

# The data set's trimming threshold: an edge row or column is ground while all its
# pixels are within 5% of full intensity of the ground's level.
TRIM = 0.05 * 255

# What a user's photos come in; Pillow tries these alone (its rarer decoders, a larger
# attack surface, are never reached). MPO is the JPEG of cameras that store two pictures.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"
PICTURE_HINT = f"expected a {FORMAT_NAMES} picture"

# 2^29 pixels (537 megapixels, e.g. 26,000 x 20,650): 2.7 times the largest phone camera's
# 200 MP and beyond the 400 MP of medium-format cameras' pixel-shift shots. A header
# declaring more is refused before any pixel is decoded (a few kilobytes of PNG can
# declare 10 gigapixels). What a picture at the limit costs: docs/model.md, "Pictures in".
MAX_PIXELS = 1 << 29
# Two kinds cost more a pixel than the 4 bytes of a decoded PNG, TIFF or BMP (measured:
# bench/pictures.py), so their limits are lower, to cost no more than a PNG at the limit:
# - WebP: Pillow decodes it with libwebp's animation decoder, which holds the canvas twice,
#   then copies the frame twice more: 16 bytes a pixel. A quarter of the limit, 134 MP
#   (WebP itself stops at 268 MP; no camera writes it).
# - progressive JPEG: libjpeg holds every DCT coefficient, 2 bytes a sample, whatever the
#   scale it decodes at: 3 bytes a pixel for 4:2:0 colour, 8 for CMYK. Half the limit,
#   268 MP, still above the largest phone photo.
# - a run-length encoded BMP (an old palette format; no camera writes it): Pillow decodes it
#   in Python, byte by byte where a row ends early, about 150 ns a pixel: a 200-byte file
#   declaring 503 MP took 77 s (found by fuzzing). 17 MP (4096 x 4096) take at most 3 s.
MAX_WEBP_PIXELS = MAX_PIXELS // 4
MAX_PROGRESSIVE_PIXELS = MAX_PIXELS // 2
MAX_RLE_PIXELS = 1 << 24
# A picture file is read as it is decoded, except a WebP or a pipe, which Pillow reads
# whole first: 1 GiB bounds that. A 200 MP camera JPEG is under 100 MB, a 16-bit
# uncompressed TIFF at 60 MP under 400 MB.
MAX_FILE_BYTES = 1 << 30
PICTURE_WHAT = "a picture file"
# A picture wider or taller than this is brought down to it (by an integer factor, box
# averaging) before the float work of to_fashion_mnist: 2048 pixels still hold a garment
# 70 times the 28 pixels it ends up as, and the float copies stay at 16 MB each.
WORK = 2048
_STRIP = 1 << 20  # pixels converted to grey at a time (4 MB in the widest mode)

# Pixel kinds Pillow gives for the formats above, and how each becomes grey.
_GREY = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr"}
_ALPHA = {"LA", "La", "PA", "RGBA", "RGBa"}
_SIXTEEN = {"I;16", "I;16L", "I;16B", "I;16N"}
_REFUSED = {"I": "32-bit integer", "I;16S": "signed 16-bit", "F": "32-bit floating-point", "LAB": "CIELAB",
            "HSV": "HSV"}
# EXIF orientation -> the transpose that puts the picture upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _megapixels(pixels: int) -> str:
    return f"{pixels:,} pixels ({pixels / 1e6:,.0f} megapixels)" if pixels >= 1e6 else f"{pixels:,} pixels"


def too_many_pixels(name: str, declared: str, limit: int = MAX_PIXELS, fmt: str = "") -> DataError:
    return DataError(f"{name}: the picture declares {declared}, above the limit of {_megapixels(limit)}"
                     f"{' for ' + fmt if fmt else ''}; it is not decoded")


def decode(data: bytes | BinaryIO, name: str) -> torch.Tensor:
    """A picture (its bytes, or a buffered binary stream) as uint8 (H, W) grey levels, at most
    WORK pixels on the long edge; DataError naming `name` otherwise."""
    stream = io.BufferedReader(io.BytesIO(data)) if isinstance(data, (bytes, bytearray)) else data
    if not stream.peek(1):
        raise DataError(f"{name}: the file is empty, {PICTURE_HINT}")
    with _quiet() as said:
        try:
            with Image.open(stream, formats=FORMATS) as im:
                return _decode(im, name)
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's, at our limit
            raise too_many_pixels(name, _pillow_count(exc)) from None
        except UnidentifiedImageError:
            raise DataError(f"{name}: not a readable {FORMAT_NAMES} picture "
                            f"(none of their decoders recognises it: another format, or a damaged header)") from None
        except Exception as exc:  # noqa: BLE001 - Pillow's decoders report damage with many exception types
            reason, words = one_line(exc, 200), said()
            if words:  # the C decoder's own words (libjpeg's "Corrupt JPEG data: ...") say more
                reason = f"{reason}: {'; '.join(words)[:200]}"
            raise DataError(f"{name}: not a readable {FORMAT_NAMES} picture ({reason})") from None


def _pillow_count(exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return _megapixels(int(found[1])) if found else "more pixels"


def _decode(im: Image.Image, name: str) -> torch.Tensor:
    w, h = im.size
    fmt = "JPEG" if im.format == "MPO" else im.format
    kind, limit = "", MAX_PIXELS
    if fmt == "WEBP":
        kind, limit = "WebP", MAX_WEBP_PIXELS
    elif fmt == "JPEG" and im.info.get("progressive"):
        kind, limit = "a progressive JPEG", MAX_PROGRESSIVE_PIXELS
    elif fmt == "BMP" and im.tile and im.tile[0][0] == "bmp_rle":
        kind, limit = "a run-length encoded BMP", MAX_RLE_PIXELS
    if w * h > limit:
        raise too_many_pixels(name, f"{w}x{h} pixels ({w * h / 1e6:,.0f} megapixels)", limit, kind)
    if w == 0 or h == 0:
        raise DataError(f"{name}: a picture of {w}x{h} pixels, expected at least one")
    mode = "I;16" if im.mode == "I" and fmt == "PNG" else im.mode  # older Pillows: a 16-bit grey PNG as "I"
    if mode not in _GREY | _ALPHA | _SIXTEEN:
        raise DataError(f"{name}: a {fmt} picture of {_REFUSED.get(mode, mode + ' mode')} pixels, which this "
                        f"command doesn't read; expected grey or colour pixels of 8 or 16 bits")
    if fmt == "JPEG":
        # Grey straight from the decoder, and 1/2, 1/4 or 1/8 of the size while it stays
        # at least WORK across: memory is then that of the reduced picture.
        long = max(w, h)
        im.draft("L", (max(1, -(-w * WORK // long)), max(1, -(-h * WORK // long))) if long > WORK else None)
    im.load()
    grey = _to_grey(im, mode)
    try:
        orientation = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - damaged EXIF: the picture as stored
        orientation = None
    if orientation in _UPRIGHT:
        grey = grey.transpose(_UPRIGHT[orientation])
    return torch.from_numpy(np.array(grey, dtype=np.uint8))


def _to_grey(im: Image.Image, mode: str) -> Image.Image:
    """`im` in grey ("L") with transparency laid on white, brought down by an integer factor
    to at most WORK pixels on its long edge, a strip of rows at a time."""
    w, h = im.size
    factor = math.ceil(max(w, h) / WORK)
    if factor == 1:
        return _grey_strip(im, mode)
    out = Image.new("L", (math.ceil(w / factor), math.ceil(h / factor)))
    rows = factor * max(1, _STRIP // (w * factor))  # whole boxes of the reduction in each strip
    for top in range(0, h, rows):
        strip = _grey_strip(im.crop((0, top, w, min(h, top + rows))), mode)
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def _grey_strip(im: Image.Image, mode: str) -> Image.Image:
    """One strip of the decoded picture in grey, on white where it is transparent."""
    if mode in _SIXTEEN:
        values = np.asarray(im).astype(np.uint32)
        # v / 65535 * 255 rounded (v / 257 is never halfway): the full 16-bit range to 8 bits.
        grey = Image.fromarray(((values + 128) // 257).astype(np.uint8))
        if "transparency" not in im.info:
            return grey
        alpha = Image.fromarray(np.where(values == im.info["transparency"], 0, 255).astype(np.uint8))
    elif mode in _ALPHA or "transparency" in im.info:
        # Pillow applies a palette's or a colour key's transparency, and undoes premultiplying.
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        grey, alpha = rgba.convert("L"), rgba.getchannel("A")
    elif mode == "CMYK":
        return im.convert("RGB").convert("L")
    else:
        return im.convert("L")  # ITU-R 601-2 luma for colour, the palette's for a palette
    page = Image.new("L", im.size, 255)
    page.paste(grey, mask=alpha)
    return page


@contextlib.contextmanager
def _quiet() -> Iterator[Callable[[], list[str]]]:
    """Decode under our limits and in silence: Pillow's pixel limit set to MAX_PIXELS (its
    DecompressionBombWarning an error), its other warnings dropped, and what the C
    decoders print on stderr kept aside; the yielded function returns those lines so far."""
    saved_limit = Image.MAX_IMAGE_PIXELS
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        def said() -> list[str]:
            sink.seek(0)
            text = sink.read(4000).decode(errors="replace")
            return [" ".join(line.split()) for line in text.splitlines() if line.strip()]

        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            Image.MAX_IMAGE_PIXELS = saved_limit


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
        # What torchvision's resize does for a float tensor; torchvision itself is not imported
        # (it would add about 190 MB to fmnist-predict's memory).
        x = torch.nn.functional.interpolate(x[None, None], size=(nh, nw), mode="bilinear", align_corners=False,
                                            antialias=False)[0, 0]
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
