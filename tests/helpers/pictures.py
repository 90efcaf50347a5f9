"""Pictures and a tiny model file: encoders (Pillow), enlarged and coloured garments."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from fmnist.core.dataset import CLASSES
from fmnist.model.device import to_device_layout
from fmnist.model.model_file import save_model
from fmnist.model.nets import build_model
from fmnist.training.environment import describe
from fmnist.training.loop import TrainState, seed_everything, train_epoch
from helpers import ROOT
from helpers.data import synthetic, train_params
from helpers.processes import RUNTIME_LOCK


def encode(pixels: torch.Tensor, kind: str, **options) -> bytes:
    """uint8 (H, W) grey or (3, H, W) colour pixels as a picture file's bytes (Pillow)."""
    array = (pixels if pixels.ndim == 2 else pixels.permute(1, 2, 0)).contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind, **options)
    return buffer.getvalue()


def png(pixels: torch.Tensor) -> bytes:
    return encode(pixels, "PNG")


def webp(pixels: torch.Tensor) -> bytes:
    return encode(pixels, "WEBP", quality=90)


def jpeg(pixels: torch.Tensor) -> bytes:
    return encode(pixels, "JPEG", quality=95)


def enlarge(image: torch.Tensor, factor: int = 5, size: tuple[int, int] = (150, 200)) -> torch.Tensor:
    """`image` scaled up `factor` times and centred on a dark (H, W) = `size` canvas."""
    big = image.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    canvas = torch.zeros(size, dtype=torch.uint8)
    top, left = (size[0] - big.shape[0]) // 2, (size[1] - big.shape[1]) // 2
    canvas[top:top + big.shape[0], left:left + big.shape[1]] = big
    return canvas


def colour(image: torch.Tensor) -> torch.Tensor:
    """A tinted RGB version of a grey image (3, H, W)."""
    return torch.stack([image, (image * 0.9).to(torch.uint8), (image * 0.7).to(torch.uint8)])


def write_pictures(folder: Path, n: int = 4, seed: int = 7) -> dict[Path, str]:
    """n generated garments, each in the four variants; {path: true class name}."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic(n, seed)
    truth = {}
    for i, (image, label) in enumerate(zip(torch.from_numpy(images), labels, strict=True)):
        pictures = {
            f"{i}-stored.png": png(image),
            f"{i}-inverted.webp": webp(255 - image),
            f"{i}-enlarged.jpg": jpeg(enlarge(image)),
            f"{i}-colour.png": png(colour(image)),
        }
        for name, data in pictures.items():
            (folder / name).write_bytes(data)
            truth[folder / name] = CLASSES[label]
    return truth


def write_model_file(path: Path) -> Path:
    """A cnn trained for a few epochs on generated images, saved as the train stage saves it."""
    cpu = torch.device("cpu")
    seed_everything(0)
    net = build_model("cnn")
    x, y = (torch.from_numpy(a) for a in synthetic(400, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    state = TrainState(net, to_device_layout(net, cpu), opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0),
                       None, cpu)
    p = train_params(model="cnn", epochs=3, batch_size=32)
    for epoch in (1, 2, 3):
        train_epoch(state, x, y.long(), epoch, p)
    save_model(path, net.state_dict(), params=p.model_dump(), epoch=3, val_acc=0.95,
               data_sha256="ab" * 32, environment=describe(ROOT / RUNTIME_LOCK))
    return path
