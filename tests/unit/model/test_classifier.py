"""fmnist/model/classifier.py: pixels to probabilities (normalisation, softmax, mirror-averaging) and scoring a set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmnist.model.classifier import Classifier, normalize, score
from fmnist.model.nets import build_model
from helpers.data import synthetic

CPU = torch.device("cpu")


def test_normalize_maps_pixels_with_the_data_sets_mean_and_std():
    x = normalize(torch.full((2, 1, 28, 28), 255, dtype=torch.uint8))
    assert x.shape == (2, 1, 28, 28) and torch.allclose(x, torch.tensor((1 - 0.2860) / 0.3530))


@pytest.mark.parametrize("mirror", [True, False])
def test_scoring_in_batches_gives_what_the_classifier_gives_at_once(model_file, mirror):
    net = build_model("cnn")
    net.load_state_dict(torch.load(model_file, weights_only=True)["state_dict"])
    images, labels = (torch.from_numpy(a) for a in synthetic(100, 3))
    scored = score(Classifier(net, mirror=mirror), images, labels.long(), device=CPU, batch_size=32)
    with torch.no_grad():
        probs = Classifier(net, mirror=mirror)(images.unsqueeze(1))
    assert torch.allclose(probs, scored.probs, atol=1e-6)


def test_mirror_averaging_flips_left_to_right_as_an_independent_computation_says():
    """What `mirror` means, computed here without Classifier: the published normalisation,
    the net, softmax, and the picture reversed along its columns with numpy. An upside-down
    flip gives other numbers (checked too, so that this test can tell the two apart)."""
    torch.manual_seed(0)
    net = build_model("cnn").eval()  # random weights: no symmetry of their own
    pixels = synthetic(8, 3)[0]
    pixels[:, :4, :10] = 255  # a block in the top left corner: left-right and upside-down flips differ

    def plain(batch: np.ndarray) -> torch.Tensor:
        x = (torch.from_numpy(np.ascontiguousarray(batch)).float() / 255 - 0.2860) / 0.3530
        return net(x.unsqueeze(1)).float().softmax(1)

    with torch.no_grad():
        got = Classifier(net, mirror=True)(torch.from_numpy(pixels).unsqueeze(1))
        left_right = (plain(pixels) + plain(pixels[:, :, ::-1])) / 2
        upside_down = (plain(pixels) + plain(pixels[:, ::-1, :])) / 2
        of_the_mirror_image = Classifier(net, mirror=True)(torch.from_numpy(pixels[:, :, ::-1].copy()).unsqueeze(1))
        alone = Classifier(net, mirror=False)(torch.from_numpy(pixels).unsqueeze(1))
    assert torch.allclose(got, left_right, atol=1e-6)
    assert (got - upside_down).abs().max() > 1e-3 and (got - alone).abs().max() > 1e-3
    assert torch.allclose(alone, plain(pixels), atol=1e-6)
    assert torch.allclose(got, of_the_mirror_image, atol=1e-6)  # a picture and its mirror image: the same answer


def test_fp32_scores_do_not_depend_on_the_kernels_that_compute_them(model_file):
    """What lets the evaluate stage give the same figures on any machine: in fp32 another CPU's kernels
    (stood in for by oneDNN against torch's own convolutions, thread counts, memory layouts) move the
    probabilities by rounding errors, far below what its metrics show."""
    net = build_model("cnn")
    net.load_state_dict(torch.load(model_file, weights_only=True)["state_dict"])
    images, labels = (torch.from_numpy(a) for a in synthetic(300, 4))
    labels = labels.long()

    def scored(layout=torch.contiguous_format, onednn=True, threads=None):
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        torch.backends.mkldnn.enabled = onednn
        try:
            return score(Classifier(net.to(memory_format=layout), mirror=True), images, labels, device=CPU,
                         batch_size=100)
        finally:
            torch.set_num_threads(before)
            torch.backends.mkldnn.enabled = True

    reference = scored()
    for other in (scored(onednn=False), scored(torch.channels_last), scored(threads=1)):
        assert other.accuracy == reference.accuracy
        assert torch.equal(other.probs.argmax(1), reference.probs.argmax(1))
        assert abs(other.loss - reference.loss) < 1e-6 and (other.probs - reference.probs).abs().max() < 1e-5
