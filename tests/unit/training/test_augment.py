"""fmnist/training/augment.py: training-time flips, shifts and random erasing, an epoch's draws made at once
from the epoch's generator."""

from __future__ import annotations

import torch

from fmnist.params import Augment
from fmnist.training import augment as augment_module
from fmnist.training.augment import Augmentation

CPU = torch.device("cpu")


def augment(x: torch.Tensor, generator: torch.Generator, flip: bool = True, shift: int = 0,
            erase: float = 0.0) -> torch.Tensor:
    """`x` augmented as one epoch's only batch."""
    return Augmentation(Augment(flip=flip, shift=shift, erase=erase), len(x), generator, CPU)(x, slice(None))


def test_augment_keeps_shape_and_is_seeded():
    x = torch.randn(16, 1, 28, 28)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_shift_moves_whole_images_and_fills_with_background():
    x = torch.arange(28.0).repeat(64, 1, 28, 1)  # every row of every image reads 0..27
    shifted = augment(x, torch.Generator().manual_seed(0), flip=False, shift=2)
    background = (0 - 0.2860) / 0.3530
    moves = set()
    for image in shifted[:, 0]:
        blank_rows = (image == background).all(1)
        assert blank_rows.sum() <= 2
        row = image[~blank_rows][0]
        inside = row[row != background]
        # the row itself, moved left or right by at most 2 pixels
        assert len(inside) >= 26 and torch.equal(inside, torch.arange(inside[0], inside[0] + len(inside)))
        moves.add(int(inside[0]) if inside[0] > 0 else len(inside) - 28)
    assert moves == {-2, -1, 0, 1, 2}


def test_erase_blanks_one_rectangle_in_about_the_asked_share_of_images():
    x = torch.ones(2000, 1, 28, 28)
    erased = augment(x, torch.Generator().manual_seed(0), flip=False, erase=0.5)
    hit = (erased == 0).flatten(1)
    share = hit.any(1).float().mean()
    assert 0.45 < share < 0.55
    areas = hit.sum(1)[hit.any(1)].float() / (28 * 28)
    assert areas.min() >= 0.01 and areas.max() <= 0.3
    # every blank patch is one rectangle: its bounding box is all blank
    for image in (erased[:50, 0] == 0):
        if image.any():
            rows, cols = image.any(1).nonzero(), image.any(0).nonzero()
            assert image[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_every_augmentation_draws_from_the_generator_only():
    x = torch.randn(16, 1, 28, 28)
    a = augment(x, torch.Generator().manual_seed(1), shift=2, erase=0.5)
    torch.manual_seed(123)  # the global RNG plays no part
    b = augment(x, torch.Generator().manual_seed(1), shift=2, erase=0.5)
    assert torch.equal(a, b) and a.shape == x.shape


def test_an_epoch_is_augmented_alike_whatever_its_batches_and_moved_to_the_device_once(monkeypatch):
    moved = []
    monkeypatch.setattr(augment_module, "to_device", lambda t, device: moved.append(t.shape) or t)
    x = torch.randn(100, 1, 28, 28)
    settings = Augment(flip=True, shift=2, erase=0.5)
    whole = Augmentation(settings, 100, torch.Generator().manual_seed(3), CPU)
    assert len(moved) == 3  # one tensor per augmentation, for the whole epoch
    batches = torch.cat([whole(x[i:i + 32], slice(i, i + 32)) for i in range(0, 100, 32)])
    assert torch.equal(batches, whole(x, slice(None))) and len(moved) == 3
    assert torch.equal(batches, augment(x, torch.Generator().manual_seed(3), shift=2, erase=0.5))


def test_no_augmentation_draws_nothing():
    generator = torch.Generator().manual_seed(4)
    state = generator.get_state()
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(augment(x, generator, flip=False), x) and torch.equal(generator.get_state(), state)
