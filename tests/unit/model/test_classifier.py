"""fmnist/model/classifier.py: pixels to probabilities (normalisation, softmax, mirror-averaging) and scoring a set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fmnist.core.dataset import CLASSES
from fmnist.model import classifier as classifier_module
from fmnist.model.classifier import Classifier, normalize, probabilities, score, top_k
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


# --- behaviour on a tiny linear net (make mutate: every line of pixels to probabilities) ---

def linear_net(seed: int = 0) -> torch.nn.Module:
    """A net whose output is easy to recompute: logits = W x + b of the flattened image, with dropout
    (which only an eval-mode net leaves out)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(28 * 28, 10))


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def expected_probs(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """softmax(net(normalised pixels)), computed here without the classifier."""
    net.eval()
    with torch.no_grad():
        return net((images.unsqueeze(1).float() / 255 - 0.2860) / 0.3530).softmax(1)


def test_normalize_maps_black_to_minus_mean_over_std_and_keeps_the_shape():
    x = normalize(torch.tensor([[0, 51, 255]], dtype=torch.uint8))
    assert x.dtype == torch.float32
    assert torch.allclose(x, torch.tensor([[-0.2860 / 0.3530, (0.2 - 0.2860) / 0.3530, (1 - 0.2860) / 0.3530]]))


def test_without_mirror_the_probabilities_are_the_softmax_of_the_nets_logits():
    net, images = linear_net(), pixels(6)
    classifier = Classifier(net, mirror=False)
    assert not net.training and classifier.mirror is False
    probs = classifier(images.unsqueeze(1))
    assert probs.dtype == torch.float32
    assert torch.allclose(probs, expected_probs(net, images), atol=1e-6)


@pytest.mark.parametrize("mirror", [False, True])
def test_each_images_probabilities_sum_to_one_mirrored_or_not(mirror):
    probs = Classifier(linear_net(), mirror=mirror)(pixels(5).unsqueeze(1))
    assert probs.shape == (5, 10) and bool((probs > 0).all())
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-6)


def test_mirroring_changes_nothing_for_an_image_that_is_its_own_mirror_image_both_ways():
    images = pixels(4)
    images = images + images.flip(1) + images.flip(2) + images.flip(1).flip(2)  # uint8 wraps: still symmetric
    net = linear_net()
    assert torch.allclose(Classifier(net, mirror=True)(images.unsqueeze(1)),
                          Classifier(net, mirror=False)(images.unsqueeze(1)), atol=1e-6)


def test_probabilities_of_a_set_in_batches_in_eval_mode_and_without_gradients():
    net, images = linear_net(), pixels(10)
    classifier = Classifier(net, mirror=False)
    classifier.train()  # as a caller might leave it: dropout would make every call differ
    probs = probabilities(classifier, images, device=CPU, batch_size=4)
    assert not classifier.training and not probs.requires_grad
    assert probs.shape == (10, 10) and torch.allclose(probs, expected_probs(net, images), atol=1e-6)


def test_an_empty_set_has_no_probabilities_and_a_nan_loss_and_accuracy():
    classifier = Classifier(linear_net(), mirror=False)
    empty = torch.zeros(0, 28, 28, dtype=torch.uint8)
    assert probabilities(classifier, empty, device=CPU, batch_size=4).shape == (0, 10)
    result = score(classifier, empty, torch.zeros(0, dtype=torch.long), device=CPU, batch_size=4)
    assert result.probs.shape == (0, 10) and math.isnan(result.loss) and math.isnan(result.accuracy)


def test_score_is_the_mean_cross_entropy_and_the_fraction_right():
    net, images = linear_net(), pixels(8)
    probs = expected_probs(net, images)
    labels = probs.argmax(1)
    labels[:3] = (labels[:3] + 1) % 10  # 5 of 8 right
    result = score(Classifier(net, mirror=False), images, labels, device=CPU, batch_size=3)
    assert result.accuracy == 5 / 8
    assert result.loss == pytest.approx(torch.nn.functional.cross_entropy(probs.log(), labels).item(), rel=1e-5)
    assert torch.allclose(result.probs, probs, atol=1e-6)


def test_a_probability_of_zero_costs_a_finite_loss():
    """The log is taken of probabilities clamped to 1e-12: a certain mistake costs -log(1e-12), not infinity."""

    class Certain(torch.nn.Module):  # all its belief on class 0
        def forward(self, x):
            return torch.tensor([[0.0] + [-1e4] * 9]).repeat(len(x), 1)

    result = score(Classifier(Certain(), mirror=False), pixels(2), torch.tensor([0, 1]), device=CPU, batch_size=2)
    assert result.accuracy == 0.5 and result.loss == pytest.approx(-math.log(1e-12) / 2, rel=1e-4)


def test_score_and_probabilities_run_under_the_autocast_dtype_they_are_given():
    net, images = linear_net(), pixels(6)
    classifier = Classifier(net, mirror=False)
    fp32 = probabilities(classifier, images, device=CPU, batch_size=6)
    bf16 = probabilities(classifier, images, device=CPU, batch_size=6, dtype=torch.bfloat16)
    assert not torch.equal(bf16, fp32) and torch.allclose(bf16, fp32, atol=0.05)  # bf16 keeps 8 bits of mantissa
    scored = score(classifier, images, torch.zeros(6, dtype=torch.long), device=CPU, batch_size=6, dtype=torch.bfloat16)
    assert torch.equal(scored.probs, bf16)


def test_a_labelled_bar_counts_the_images_on_a_terminal_and_no_label_means_no_bar(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.counted, self.closed = kwargs, 0, False
            bars.append(self)

        def update(self, n):
            self.counted += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(classifier_module, "tqdm", Bar)
    classifier, images = Classifier(linear_net(), mirror=False), pixels(7)
    score(classifier, images, torch.zeros(7, dtype=torch.long), device=CPU, batch_size=3, bar="validation")
    probabilities(classifier, images, device=CPU, batch_size=3)
    labelled, unlabelled = bars
    assert labelled.kwargs == {"total": 7, "desc": "validation", "unit": "image", "leave": False, "disable": None}
    assert labelled.counted == 7 and labelled.closed
    assert unlabelled.kwargs["disable"] is True and unlabelled.kwargs["desc"] is None


def test_top_k_names_the_likeliest_classes_likeliest_first():
    probs = torch.tensor([0.05, 0.6, 0.0, 0.3, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert top_k(probs, CLASSES, 2) == [("Trouser", pytest.approx(0.6)), ("Dress", pytest.approx(0.3))]
    everything = top_k(probs, CLASSES, 20)  # k past the classes: all ten
    assert len(everything) == 10 and [name for name, _ in everything[:2]] == ["Trouser", "Dress"]
    assert isinstance(everything[0][1], float)


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
