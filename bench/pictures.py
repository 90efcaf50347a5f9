"""Benchmark: peak memory of reading the largest pictures fmnist-predict allows, and of many pictures.

    python bench/pictures.py                          # every case at the limits: minutes, GBs of disk
    python bench/pictures.py --megapixels 20 --cases png-rgba jpeg   # a quick look
    python bench/pictures.py --out reports/pictures   # also writes OUT.json and OUT.md

Each case writes one picture into a scratch folder (a PNG or BMP written a row at a time,
the others by Pillow), then reads it in a fresh process the way fmnist-predict does
(fmnist.serve.predict.read_picture: bounded read, decode, to 28x28) and reports that process's
peak resident memory (VmHWM) after its imports and at the end: the difference is what the
picture cost. Cases, at fmnist.serve.images.MAX_PIXELS unless the format can't be that large:
PNG RGBA 8-bit and 16-bit, grey PNG, baseline and progressive JPEG (4:2:0 colour, as
cameras write it; progressive at its own limit), CMYK JPEG (baseline and progressive), TIFF (deflate),
BMP (24-bit, as large as MAX_FILE_BYTES lets it be), GIF, WebP (at its own, lower limit,
MAX_WEBP_PIXELS). The `batches` case runs fmnist-predict on many small pictures against a few, to
show the memory doesn't grow with their number. Memory, not time, is the point; the seconds are for information only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fmnist.serve.images import MAX_FILE_BYTES, MAX_PIXELS, MAX_PROGRESSIVE_PIXELS, MAX_WEBP_PIXELS  # noqa: E402

# The peak resident memory of this process: VmHWM, which starts afresh at exec (ru_maxrss
# would start at the parent's peak: Linux carries it across fork and exec).
HWM = """
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""
# What the reading process runs: fmnist-predict's own path for one picture.
READER = HWM + """
import json, sys, time
from pathlib import Path
from fmnist.serve.predict import read_picture
before, start = hwm(), time.perf_counter()
try:
    pixels = read_picture(Path(sys.argv[1]))
    outcome = f"28x28, mean {float(pixels.float().mean()):.1f}"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
print(json.dumps({"after_imports": before, "peak": hwm(), "seconds": time.perf_counter() - start, "outcome": outcome}))
"""


def side(megapixels: float) -> tuple[int, int]:
    """A 4:3 picture of about `megapixels` (at most MAX_PIXELS)."""
    pixels = min(int(megapixels * 1e6), MAX_PIXELS)
    w = int(math.sqrt(pixels * 4 / 3))
    return w, pixels // w


def garment_rows(w: int, h: int, channels: int, depth: int = 1):
    """Rows of a dark ground with a light rectangle (the garment) in the middle third, as bytes."""
    opaque = [255] if channels == 4 else []
    ground, light = [30] * min(channels, 3) + opaque, [220] * min(channels, 3) + opaque
    if depth == 1:
        ground, light = bytes(ground), bytes(light)
    else:
        ground, light = (struct.pack(f">{channels}H", *[v * 257 for v in values]) for values in (ground, light))
    plain = ground * w
    lit = ground * (w // 3) + light * (w - 2 * (w // 3)) + ground * (w // 3)
    for y in range(h):
        yield lit if h // 4 <= y < h - h // 4 else plain


def write_png(path: Path, w: int, h: int, colour_type: int, depth: int) -> None:
    """A PNG written a row at a time: no picture in memory."""
    channels = {0: 1, 2: 3, 6: 4}[colour_type]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth * 8, colour_type, 0, 0, 0)))
        z = zlib.compressobj(1)
        pending = []
        for row in garment_rows(w, h, channels, depth):
            pending.append(z.compress(b"\0" + row))
            if sum(map(len, pending)) > 1 << 20:
                f.write(chunk(b"IDAT", b"".join(pending)))
                pending = []
        pending.append(z.flush())
        f.write(chunk(b"IDAT", b"".join(pending)) + chunk(b"IEND", b""))


def write_bmp(path: Path, w: int, h: int) -> None:
    """A 24-bit BMP written a row at a time (bottom-up, rows padded to 4 bytes)."""
    stride = (3 * w + 3) // 4 * 4
    with open(path, "wb") as f:
        f.write(b"BM" + struct.pack("<IHHI", 54 + stride * h, 0, 0, 54))
        f.write(struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, stride * h, 2835, 2835, 0, 0))
        pad = b"\0" * (stride - 3 * w)
        for row in garment_rows(w, h, 3):
            f.write(row + pad)


def write_with_pillow(path: Path, w: int, h: int, mode: str, **save) -> None:
    from PIL import Image, ImageDraw

    colour = {"RGB": (30, 30, 30), "L": 30, "CMYK": (0, 0, 0, 225), "P": 0}[mode]
    light = {"RGB": (220, 220, 220), "L": 220, "CMYK": (0, 0, 0, 35), "P": 1}[mode]
    Image.MAX_IMAGE_PIXELS = None  # our own pictures
    im = Image.new(mode, (w, h), colour)
    if mode == "P":
        im.putpalette([30, 30, 30, 220, 220, 220])
    ImageDraw.Draw(im).rectangle((w // 3, h // 4, w - w // 3, h - h // 4), fill=light)
    im.save(path, **save)


def cases(megapixels: float) -> dict:
    w, h = side(megapixels)
    bmp = side(min(megapixels, (MAX_FILE_BYTES - 54) / 3 / 1e6 * 0.999))
    webp = side(min(megapixels, MAX_WEBP_PIXELS / 1e6))
    progressive = side(min(megapixels, MAX_PROGRESSIVE_PIXELS / 1e6))
    return {
        "png-rgba": ("PNG, RGBA 8-bit", (w, h), lambda p: write_png(p, w, h, 6, 1), "png"),
        "png-rgba16": ("PNG, RGBA 16-bit", (w, h), lambda p: write_png(p, w, h, 6, 2), "png"),
        "png-grey": ("PNG, grey 8-bit", (w, h), lambda p: write_png(p, w, h, 0, 1), "png"),
        "jpeg": ("JPEG, baseline 4:2:0", (w, h), lambda p: write_with_pillow(p, w, h, "RGB", quality=90), "jpg"),
        "jpeg-progressive": ("JPEG, progressive 4:2:0", progressive,
                             lambda p: write_with_pillow(p, *progressive, "RGB", quality=90, progressive=True), "jpg"),
        "jpeg-progressive-cmyk": ("JPEG, progressive CMYK", progressive,
                                  lambda p: write_with_pillow(p, *progressive, "CMYK", quality=90, progressive=True),
                                  "jpg"),
        "jpeg-cmyk": ("JPEG, CMYK", (w, h), lambda p: write_with_pillow(p, w, h, "CMYK", quality=90), "jpg"),
        "tiff": ("TIFF, RGB deflate", (w, h),
                 lambda p: write_with_pillow(p, w, h, "RGB", format="TIFF", compression="tiff_adobe_deflate"), "tif"),
        "bmp": ("BMP, 24-bit", bmp, lambda p: write_bmp(p, *bmp), "bmp"),
        "gif": ("GIF", (w, h), lambda p: write_with_pillow(p, w, h, "P", format="GIF"), "gif"),
        "webp": ("WebP, lossy", webp, lambda p: write_with_pillow(p, *webp, "RGB", quality=80, method=0), "webp"),
    }


def measure(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"reading {path} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def batches(folder: Path, counts: tuple[int, ...] = (10, 2000)) -> list[dict]:
    """fmnist-predict on `count` small pictures (one file named many times) with a fresh model."""
    import torch

    from fmnist.model.model_file import save_model
    from fmnist.model.nets import build_model

    model = folder / "model.pt"
    torch.manual_seed(0)
    save_model(model, build_model("cnn3v2").state_dict(), params={"model": "cnn3v2"}, epoch=1, val_acc=0.0,
               environment={}, data_sha256="0" * 64)
    picture = folder / "small.png"
    write_png(picture, 300, 400, 2, 1)
    rows = []
    for count in counts:
        code = HWM + ("import sys\nfrom fmnist.serve.predict import cli\ncode = cli(sys.argv[1:])\n"
                      "print(hwm(), file=sys.stderr)")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code, "--model", str(model), *[str(picture)] * count],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f"fmnist-predict failed: {proc.stderr.strip()[-500:]}")
        rows.append({"case": f"batches-{count}", "what": f"fmnist-predict, {count} pictures of 400x300",
                     "size": "400x300", "file_mb": picture.stat().st_size / 1e6,
                     "peak_mb": int(proc.stderr.split()[-1]) / 1e6, "seconds": time.perf_counter() - start,
                     "outcome": f"{len(proc.stdout.splitlines()) - 1} rows printed"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=MAX_PIXELS / 1e6,
                        help=f"size of the pictures (default and most: the limit, {MAX_PIXELS / 1e6:.0f})")
    parser.add_argument("--cases", nargs="*", help="cases to run (default: all, and `batches`)")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    table = cases(args.megapixels)
    chosen = args.cases or [*table, "batches"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in chosen:
            if name == "batches":
                rows += batches(folder)
            else:
                what, (w, h), write, ext = table[name]
                path = folder / f"{name}.{ext}"
                write(path)
                got = measure(path)
                rows.append({"case": name, "what": what, "size": f"{w}x{h}", "file_mb": path.stat().st_size / 1e6,
                             "after_imports_mb": got["after_imports"] / 1e6, "peak_mb": got["peak"] / 1e6,
                             "picture_mb": (got["peak"] - got["after_imports"]) / 1e6, "seconds": got["seconds"],
                             "outcome": got["outcome"]})
                path.unlink()
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| case | size | file MB | peak MB | of which the picture | seconds | outcome |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['size']} ({_mp(r['size'])} MP) | {r['file_mb']:.1f} | {r['peak_mb']:.0f} | "
                     f"{r.get('picture_mb', float('nan')):.0f} | {r['seconds']:.1f} | {r['outcome']} |")
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"load": os.getloadavg(), "rows": rows}, indent=2) + "\n")
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _mp(size: str) -> str:
    w, h = map(int, size.split("x"))
    return f"{w * h / 1e6:.0f}" if w * h >= 1e6 else f"{w * h / 1e6:.2f}"


if __name__ == "__main__":
    main()
