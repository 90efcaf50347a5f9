"""Every file the project reads is bounded before it is decoded: tiny files that declare huge
sizes, a gzip bomb, endless streams, padded (sparse) torch files.

The commands run as subprocesses (fmnist-predict, the download stage), and each reports
its own peak resident memory as it exits (VmHWM, which starts afresh at exec; a child's
ru_maxrss would start at the test process's peak: Linux carries it across fork and exec).
1 GiB is the bound: importing torch takes about 650 MB, and each case, unbounded, would
take gigabytes (a decoded 100000 x 100000 picture 40 GB, the bomb's 2 GiB).
"""

from __future__ import annotations

import gzip
import http.server
import io
import json
import os
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fmnist.core.dataset import CLASSES
from fmnist.core.errors import DataError
from fmnist.core.io import save_torch, torch_bytes
from fmnist.model.model_file import MAX_MODEL_BYTES, load_model, model_from_bytes
from fmnist.model.nets import build_model
from fmnist.raw import download, max_file_bytes, parse_idx, read_idx_file, read_raw_split
from fmnist.serve.images import (
    MAX_PIXELS,
    MAX_PROGRESSIVE_PIXELS,
    MAX_RLE_PIXELS,
    MAX_WEBP_PIXELS,
    WORK,
    decode,
    to_fashion_mnist,
)
from fmnist.splits import MAX_SPLIT_BYTES, load_split
from fmnist.training.checkpoint import max_checkpoint_bytes, resume
from fmnist.training.loop import TrainState
from helpers import ROOT
from helpers.data import idx_bytes, synthetic, write_raw
from helpers.not_files import fed_pipe

PEAK_BOUND = 1 << 30  # bytes of resident memory a refusing command may reach (see the docstring)
HUGE = 100_000  # pixels a side: 10 gigapixels


# Runs a module (-m NAME) or a script (PATH.py) as `python` would, and writes the process's
# VmHWM to $PEAK_FILE when it exits (errors.run's sys.exit included).
_MEASURED = """
import atexit, os, runpy, sys
def peak():
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    with open(os.environ["PEAK_FILE"], "w") as out:
        out.write(str(kib * 1024))
atexit.register(peak)
target = sys.argv[1]
sys.argv = sys.argv[1:]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def run_measured(target: str, args: list[str], cwd: Path, env: dict | None = None) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak resident bytes) of `python -m target args` (or of the
    script `target`), the peak of that process alone."""
    peak_file = cwd / ".peak"
    proc = subprocess.run([sys.executable, "-c", _MEASURED, target, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PEAK_FILE": str(peak_file), **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr, int(peak_file.read_text())


def test_the_peak_measured_is_that_of_the_command(tmp_path):
    """A script that holds 300 MB measures above that; one that holds nothing, far below
    (not the test process's own peak)."""
    for name, size in (("holds.py", 300 << 20), ("idle.py", 0)):
        (tmp_path / name).write_text(f"data = bytearray({size})\ndata[::4096] = b'x' * len(data[::4096])\n")
    assert run_measured(str(tmp_path / "holds.py"), [], tmp_path)[3] > 300 << 20
    assert run_measured(str(tmp_path / "idle.py"), [], tmp_path)[3] < 100 << 20


def lines(text: str) -> list[str]:
    return text.splitlines()


# --- pictures that declare huge sizes ----------------------------------------------

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(w: int, h: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _chunk(b"IEND", b""))


def jpeg_claiming(w: int, h: int, progressive: bool = False) -> bytes:
    sof = (b"\xff\xc2" if progressive else b"\xff\xc0") + struct.pack(">HBHHB", 17, 8, h, w, 3) \
        + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\x00" * 100 + b"\xff\xd9"


def gif_claiming(w: int, h: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + b"," + struct.pack("<HHHHB", 0, 0, w, h, 0)
            + b"\x02\x02\x44\x01\x00;")


def bmp_claiming(w: int, h: int) -> bytes:
    return (b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0) + b"\0" * 16)


def rle_bmp_claiming(w: int, h: int, rows: int = 0) -> bytes:
    """An 8-bit run-length encoded BMP (BI_RLE8) of two palette colours whose data holds `rows`
    rows of one pixel each (the decoder fills the rest of a row), then ends the bitmap."""
    data = b"\x01\x00\x00\x00" * rows + b"\x00\x01"
    return (b"BM" + struct.pack("<IHHI", 14 + 40 + 8 + len(data), 0, 0, 14 + 40 + 8)
            + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, 2, 2835, 2835, 2, 0) + b"\0" * 8 + data)


def tiff_claiming(w: int, h: int) -> bytes:
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, 1, 8 + 2 + 12 * 8 + 4), (278, 4, 1, h), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 16


def webp_claiming(w: int, h: int) -> bytes:
    """An extended WebP (VP8X) whose canvas is w x h: libwebp's own check refuses above 2^32 pixels."""
    body = b"WEBP" + b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (w - 1).to_bytes(3, "little") \
        + (h - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_lossless_claiming(w: int, h: int) -> bytes:
    """An 8x8 lossless WebP (VP8L) whose header says w x h (at most 16383 a side): libwebp
    accepts it and sets up its canvas; no pixel is decoded before the size check."""
    data = bytearray(encoded(Image.new("RGB", (8, 8)), "WEBP", lossless=True))
    at = data.index(b"VP8L") + 9  # the chunk's size, the signature byte, then 14 + 14 bits of size
    bits = int.from_bytes(data[at:at + 4], "little") & ~((1 << 28) - 1) | (w - 1) | (h - 1) << 14
    data[at:at + 4] = bits.to_bytes(4, "little")
    return bytes(data)


def encoded(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


# (bytes, what the message says they declare); Pillow's own check, at our limit, names the
# pixel count alone, ours the size too.
TEN_GP = "10,000,000,000 pixels (10,000 megapixels), above the limit of 536,870,912 pixels (537 megapixels);"
LIARS = {
    "huge.png": (png_claiming(HUGE, HUGE), TEN_GP),
    "huge.jpg": (jpeg_claiming(65535, 65535), "4,294,836,225 pixels"),  # JPEG's largest: 16 bits a side
    "progressive.jpg": (jpeg_claiming(20000, 20000, progressive=True),
                        ("20000x20000 pixels (400 megapixels), above the limit of 268,435,456 pixels (268 megapixels) "
                         "for a progressive JPEG;")),
    "huge.gif": (gif_claiming(65535, 65535), "4,294,836,225 pixels"),
    "huge.bmp": (bmp_claiming(HUGE, HUGE), TEN_GP),
    "huge.tif": (tiff_claiming(HUGE, HUGE), TEN_GP),
    "huge.webp": (webp_claiming(HUGE, HUGE), TEN_GP),
    "large.webp": (webp_lossless_claiming(16383, 16383),
                   ("16383x16383 pixels (268 megapixels), above the limit of 134,217,728 pixels (134 megapixels) "
                    "for WebP;")),
    # Found by fuzzing (fuzz/corpus/picture/crash-rle-bmp-row.bmp): Pillow decodes these in Python.
    "rle.bmp": (rle_bmp_claiming(5000, 4000), ("5000x4000 pixels (20 megapixels), above the limit of 16,777,216 "
                                               "pixels (17 megapixels) for a run-length encoded BMP;")),
}


@pytest.mark.parametrize("name", LIARS)
def test_a_picture_declaring_a_huge_size_is_refused_before_decoding(name):
    data, declared = LIARS[name]
    with pytest.raises(DataError) as error:
        decode(data, f"pics/{name}")
    message = str(error.value)
    assert message.startswith(f"pics/{name}: the picture declares ") and "\n" not in message, message
    assert declared in message and "above the limit of" in message and "it is not decoded" in message, message


def test_the_limits_are_beyond_cameras_and_below_each_decoders_cost():
    assert MAX_PIXELS > 2.5 * 200e6  # a 200 MP phone photo, with room
    assert MAX_PROGRESSIVE_PIXELS > 200e6 and MAX_WEBP_PIXELS < 16383 ** 2 < MAX_PIXELS
    assert MAX_RLE_PIXELS == 4096 * 4096


def test_a_run_length_encoded_bmp_within_its_limit_is_decoded():
    grey = decode(rle_bmp_claiming(600, 400, rows=400), "pics/rle.bmp")
    assert grey.shape == (400, 600) and grey.dtype == torch.uint8


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """An untrained cnn3_small model file: the limits don't depend on what it learnt."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_torch(path, {"state_dict": build_model("cnn3_small").state_dict(), "model": "cnn3_small",
                      "classes": list(CLASSES), "params": {"model": "cnn3_small"}, "epoch": 1, "val_acc": 0.5,
                      "data_sha256": "0" * 64})
    return path


def predict(tmp_path: Path, *args: str) -> tuple[int, str, str, int]:
    return run_measured("fmnist.serve.predict", list(args), cwd=tmp_path)


def test_fmnist_predict_refuses_each_liar_in_one_line_and_classifies_the_rest(model_file, tmp_path):
    """Every liar, a picture file over MAX_FILE_BYTES, /dev/zero and a folder: each refused by
    name in one line, the good picture after them still classified, exit code 1."""
    pics = tmp_path / "pics"
    pics.mkdir()
    for name, (data, _) in LIARS.items():
        (pics / name).write_bytes(data)
    big = pics / "big.png"
    with open(big, "wb") as f:  # sparse: no disk
        f.write(png_claiming(10, 10))
        f.truncate(2 << 30)
    good = pics / "good.png"
    Image.fromarray(synthetic(1, 0)[0][0]).save(good)
    files = [str(pics / name) for name in LIARS] + [str(big), "/dev/zero", str(tmp_path), str(good)]
    code, out, err, peak = predict(tmp_path, "--model", str(model_file), "--json", *files)
    assert code == 1, err
    assert [row["path"] for row in json.loads(out)] == [str(good)]
    errors = lines(err)
    assert len(errors) == len(files), err
    for line, (name, (_, declared)) in zip(errors, LIARS.items(), strict=False):  # the liars come first
        assert line.startswith(f"error: {pics / name}: the picture declares ") and declared in line, line
    big_line, zero_line, folder_line, summary = errors[len(LIARS):]
    assert big_line == (f"error: {big}: 2,147,483,648 bytes (2,147.5 MB), larger than a picture file can be (the limit "
                        f"is 1,073,741,824 bytes (1,073.7 MB)); expected a PNG, JPEG, WebP, GIF, BMP or TIFF picture")
    expected = "expected a PNG, JPEG, WebP, GIF, BMP or TIFF picture"
    assert zero_line == f"error: /dev/zero: a character device, not a file; {expected}"
    assert folder_line == f"error: {tmp_path}: a folder, not a file; {expected}"
    assert summary == f"error: {len(files) - 1} of {len(files)} picture(s) could not be read"
    assert peak < PEAK_BOUND, f"peak {peak / 1e6:.0f} MB"


# --- pictures within the limits: what the old decoder handled, with bounded memory ------------

def test_sixteen_bits_palette_cmyk_animation_and_orientation_decode_as_grey():
    grey = synthetic(1, 0)[0][0]
    # 16 bits: the full range to 8 bits, rounded.
    wide = Image.fromarray(grey.astype(np.uint16) * 257)
    assert torch.equal(decode(encoded(wide, "PNG"), "16.png"), torch.from_numpy(grey))
    # A palette with a transparent entry: that entry lies on white.
    palette = Image.fromarray(grey).convert("P")
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    decoded = decode(encoded(palette, "PNG", transparency=palette.info["transparency"]), "p.png")
    assert decoded[0, 0] == 255
    # CMYK (Adobe's inverted JPEG, as Pillow and Photoshop write it): the same grey, give or take JPEG.
    cmyk = Image.fromarray(np.kron(grey, np.ones((4, 4), dtype=np.uint8))).convert("CMYK")
    got = decode(encoded(cmyk, "JPEG", quality=95), "cmyk.jpg").float()
    assert (got - torch.from_numpy(np.kron(grey, np.ones((4, 4)))).float()).abs().mean() < 4
    # An animated GIF: its first frame.
    frames = [Image.fromarray(grey), Image.fromarray(255 - grey)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    assert torch.equal(decode(gif.getvalue(), "a.gif"), torch.from_numpy(grey))
    # EXIF orientation 6 (the camera held upright): turned a quarter clockwise.
    tall = Image.fromarray(np.zeros((30, 50), dtype=np.uint8))
    exif = tall.getexif()
    exif[0x0112] = 6
    assert decode(encoded(tall, "JPEG", exif=exif), "o.jpg").shape == (50, 30)
    # BMP and TIFF, as stored.
    for fmt in ("BMP", "TIFF"):
        assert torch.equal(decode(encoded(Image.fromarray(grey), fmt), f"g.{fmt}"), torch.from_numpy(grey))


def test_a_kind_of_pixel_it_cannot_read_is_refused_by_name():
    floats = Image.fromarray(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(DataError, match=r"^f.tif: a TIFF picture of 32-bit floating-point pixels, which this "):
        decode(encoded(floats, "TIFF"), "f.tif")


def test_a_large_picture_is_brought_down_in_strips_as_a_whole_reduction_would():
    """4100 x 700 pixels: wider than WORK, several strips; the result is Pillow's reduce of the whole."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(700, 4100), dtype=np.uint8)
    got = decode(encoded(Image.fromarray(pixels), "PNG"), "wide.png")
    factor = -(-4100 // WORK)
    assert torch.equal(got, torch.from_numpy(np.array(Image.fromarray(pixels).reduce(factor))))
    assert max(got.shape) <= WORK
    # A very wide, one-pixel-high picture still becomes a garment image.
    line = Image.fromarray(np.full((1, 9000), 200, dtype=np.uint8))
    assert to_fashion_mnist(decode(encoded(line, "PNG"), "line.png")).shape == (28, 28)


def test_a_large_jpeg_is_decoded_at_a_reduced_scale():
    photo = Image.new("RGB", (WORK * 4 + 8, 3000), (200, 180, 160))
    got = decode(encoded(photo, "JPEG", quality=80), "photo.jpg")
    assert max(got.shape) <= WORK and got.shape[1] >= WORK // 2
    assert abs(float(got.float().mean()) - 184) < 3  # the grey of that colour (ITU-R 601-2)


def test_the_decoder_prints_nothing_of_its_own(capfd):
    image = Image.fromarray(synthetic(1, 0)[0][0])
    broken = encoded(image, "JPEG")
    with pytest.raises(DataError, match="not a readable"):
        decode(broken[:len(broken) // 2], "half.jpg")  # libjpeg prints "Premature end of JPEG file" itself
    corrupt_exif = encoded(image, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12")
    decode(corrupt_exif, "exif.jpg")  # Pillow warns about such EXIF
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# --- raw IDX files ----------------------------------------------------------------------

def idx_header(count: int, kind: str = "images") -> bytes:
    dims = (count, 28, 28) if kind == "images" else (count,)
    return (2051 if kind == "images" else 2049).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize("kind", ["images", "labels"])
def test_an_idx_header_announcing_2_to_the_31_items_is_refused_before_its_payload(kind, tmp_path):
    path = tmp_path / "liar-idx"
    path.write_bytes(idx_header(2 ** 31, kind) + b"\0" * 100)
    for reader in (lambda: read_idx_file(path, kind, "hint"),
                   lambda: parse_idx(gzip.compress(path.read_bytes()), str(path), kind)):
        with pytest.raises(DataError, match=f"^{path}: the header announces 2,147,483,648 {kind}, more than "
                                            r"Fashion-MNIST holds \(70,000 in all\); not read further$"):
            reader()


def test_a_huge_raw_file_is_refused_by_its_size_before_it_is_read(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, data in (("train-images-idx3-ubyte", idx_bytes(synthetic(5, 0)[0], 2051)),
                       ("train-labels-idx1-ubyte", idx_bytes(synthetic(5, 0)[1], 2049))):
        (raw / name).write_bytes(data)
    with open(raw / "train-images-idx3-ubyte", "r+b") as f:
        f.truncate(10 ** 10)  # sparse
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: 10,000,000,000 bytes \(10,000.0 MB\), larger than "
                                        r"an IDX images file of Fashion-MNIST \(70,000 images in all\) can be"):
        read_raw_split(raw, "train")


def gzip_bomb(expanded_gib: int = 2) -> bytes:
    """A gzipped IDX file announcing 60,000 images and expanding to `expanded_gib` GiB: one
    member holds the header, then members of 64 MiB of zeros each (gzip reads them as one)."""
    zeros = gzip.compress(bytes(64 << 20), compresslevel=1, mtime=0)
    return gzip.compress(idx_header(60_000), mtime=0) + zeros * (expanded_gib * 16)


@pytest.mark.parametrize("liar", ["a gzip bomb", "2^31 images"])
def test_a_gzip_bomb_or_a_huge_header_costs_the_download_stage_one_line_and_bounded_memory(liar, tmp_path):
    source = write_raw(tmp_path / "source", n_train=20, n_test=10)
    path = source / "train-images-idx3-ubyte.gz"
    if liar == "a gzip bomb":
        bomb = gzip_bomb()
        assert len(bomb) < 10_000_000  # deflate expands at most about 1,000 times
        path.write_bytes(bomb)
        expected = (f"error: {path}: too long: the header announces 60000x28x28 values (47040016 bytes with the "
                    f"header) but the file holds more; not read further")
    else:
        path.write_bytes(gzip.compress(idx_header(2 ** 31) + bytes(1000), mtime=0))
        expected = (f"error: {path}: the header announces 2,147,483,648 images, more than Fashion-MNIST holds "
                    f"(70,000 in all); not read further")
    code, _out, err, peak = run_measured(str(ROOT / "stages/download.py"), [str(tmp_path / "out")], cwd=tmp_path,
                                        env={"FASHION_MNIST_DIR": str(source)})
    assert code == 1 and lines(err) == [expected], err
    assert not (tmp_path / "out").exists()
    assert peak < PEAK_BOUND, f"peak {peak / 1e6:.0f} MB"


ENDLESS = {
    # a valid header, then zeros: stopped one byte past what the header announces
    "zeros": (idx_header(1000, "labels"), bytes(1 << 16), r"too long: the header announces 1000 values .* holds more"),
    # empty gzip members decompress to nothing, forever: the compressed bytes are bounded too
    "empty gzip members": (gzip.compress(idx_header(1000, "labels"), mtime=0), gzip.compress(b"", mtime=0) * 1000,
                           r"more than 135,614 bytes, larger than an IDX labels file of Fashion-MNIST"),
}


@pytest.mark.parametrize("feed", ENDLESS)
def test_a_pipe_fed_forever_as_a_raw_file_costs_one_line(feed, tmp_path):
    first, then, message = ENDLESS[feed]
    assert max_file_bytes("labels") == 135_614
    fifo = tmp_path / "train-labels-idx1-ubyte"
    with fed_pipe(fifo, first, then), pytest.raises(DataError, match=f"^{fifo}: {message}"):  # the writer stops too
        read_idx_file(fifo, "labels", "hint")


class _Endless(http.server.BaseHTTPRequestHandler):
    """A mirror that answers every request with zeros, forever."""

    def do_GET(self):  # http.server's name
        self.send_response(200)
        self.end_headers()
        try:
            while True:
                self.wfile.write(bytes(1 << 16))
        except OSError:  # the client hung up
            pass

    def log_message(self, *args):
        pass


def test_a_mirror_sending_forever_is_cut_off_at_the_file_bound(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with pytest.raises(DataError, match=f"could not download train-labels-idx1-ubyte.gz: {mirror}"
                                            r"train-labels-idx1-ubyte.gz: more than 135,614 bytes, larger than the "
                                            r"file can be; not read further\. To work offline"):
            download("train-labels-idx1-ubyte", tmp_path, [mirror], {"train-labels-idx1-ubyte.gz": "0" * 32})
    finally:
        server.shutdown()
        server.server_close()
    assert list(tmp_path.iterdir()) == []  # the partial download is gone


def test_dev_zero_named_as_a_raw_file_is_refused_unread(tmp_path):
    zero = tmp_path / "t10k-labels-idx1-ubyte"
    zero.symlink_to("/dev/zero")
    with pytest.raises(DataError, match=f"^{zero}: a character device \\(/dev/zero\\), not a file; hint$"):
        read_idx_file(zero, "labels", "hint")


def test_the_bounded_reader_gives_the_arrays_of_the_whole_file_reader():
    """read_idx reads a chunk at a time; the arrays are those of the whole bytes, gzipped or not."""
    images = synthetic(300, 4)[0]
    raw = idx_bytes(images, 2051)
    for data in (raw, gzip.compress(raw, mtime=0)):
        array = parse_idx(data, "x", "images")
        assert not array.flags.writeable
        np.testing.assert_array_equal(array, images)
        assert array.tobytes() == raw[16:]


# --- model files, checkpoints, prepared splits ------------------------------------------------

def pad(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)  # sparse: costs no disk


def test_a_model_file_padded_to_4_gb_is_refused_unread(model_file, tmp_path):
    big = tmp_path / "model.pt"
    big.write_bytes(model_file.read_bytes())
    pad(big, 4 * 10 ** 9)
    picture = tmp_path / "p.png"
    Image.fromarray(synthetic(1, 0)[0][0]).save(picture)
    code, out, err, peak = predict(tmp_path, "--model", str(big), str(picture))
    assert code == 1 and out == "" and lines(err) == [
        (f"error: {big}: 4,000,000,000 bytes (4,000.0 MB), larger than a model file of this project can be "
         f"(the limit is {MAX_MODEL_BYTES:,} bytes (2.2 MB)); expected a model file of this project (models/model.pt)")]
    assert peak < PEAK_BOUND, f"peak {peak / 1e6:.0f} MB"
    with pytest.raises(DataError, match=f"^{big}: 4,000,000,000 bytes .* larger than a model file of this project"):
        load_model(big)


def test_a_torch_file_whose_records_declare_more_than_the_bound_is_not_inflated(model_file):
    """torch.load inflates a deflated record to its declared size: the directory is checked first."""
    with zipfile.ZipFile(model_file) as original:
        records = {info.filename: original.read(info) for info in original.infolist()}
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in records.items():
            out.writestr(name, data)
        out.writestr("archive/data/padding", bytes(8 << 20))
    assert len(bomb.getvalue()) < MAX_MODEL_BYTES
    with pytest.raises(DataError, match=r"^m.pt: its records declare 8,\d{3},\d{3} bytes \(8.\d MB\), "
                                        r"more than a model file of this project can hold "
                                        r"\(the limit is 2,204,848 bytes"):
        model_from_bytes(bomb.getvalue(), "m.pt")


def test_a_prepared_split_far_larger_than_the_data_set_is_refused_unread(tmp_path):
    path = tmp_path / "train.pt"
    images, labels = synthetic(10, 0)
    path.write_bytes(torch_bytes({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels).long()}))
    assert load_split(path)[0].shape == (10, 28, 28)
    pad(path, MAX_SPLIT_BYTES + 1)
    with pytest.raises(DataError, match=f"^{path}: {MAX_SPLIT_BYTES + 1:,} bytes .* larger than a prepared split "
                                        r"of Fashion-MNIST can be"):
        load_split(path)


def test_a_checkpoint_far_larger_than_the_run_s_is_named_and_training_starts_afresh(tmp_path, capsys):
    net = build_model("cnn3v2")
    # What resume reads before the file: the net's size.
    state = TrainState(net, net, None, None, None, torch.device("cpu"))
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"PK\x03\x04")
    limit = max_checkpoint_bytes(net, 15)
    assert 5 * 848_000 < limit < 5 * 848_000 + (2 << 20)  # cnn3v2's weights five times, and the rest
    pad(path, 10 ** 10)
    assert resume(path, {"params": {"epochs": 15}}, state, steps=1) is None
    assert capsys.readouterr().out == (
        f"train.resume: {path}: 10,000,000,000 bytes (10,000.0 MB), larger than a checkpoint of this run can be "
        f"(the limit is {limit:,} bytes ({limit / 1e6:.1f} MB)); starting afresh\n")
