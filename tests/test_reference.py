"""The reference against numbers worked out by hand (comments show the arithmetic)."""
from __future__ import annotations

import math

import pytest
import torch

from ssfdan_ext import IGNORE, DiscriminatorOutput, SeparatedDiscriminator, reference, rho_schedule
from ssfdan_ext.geometry import output_size


def test_mode_downsample_by_hand():
    # W = 5 columns into w = 2 cells: bins [floor(0*5/2), ceil(5/2)) = [0, 3) and [floor(5/2), 5) = [2, 5),
    # so column 2 belongs to both. H = 2 rows into h = 1: one bin of both rows.
    labels = torch.tensor([[[0, 1, 1, 2, 2],
                            [0, 255, 2, 2, 255]]])
    # cell 0: columns 0-2 -> {0, 1, 1, 0, 255, 2}: class 1 twice, class 0 twice -> tie -> 0.
    # cell 1: columns 2-4 -> {1, 2, 2, 2, 2, 255}: class 2.
    assert reference.mode_downsample(labels, (1, 2), 3).tolist() == [[[0, 2]]]
    # A bin holding only IGNORE pixels gets IGNORE.
    labels = torch.tensor([[[255, 255, 1, 1]]])
    assert reference.mode_downsample(labels, (1, 2), 2).tolist() == [[[IGNORE, 1]]]


def test_confidence_select_by_hand():
    # Probabilities of class 0 per pixel: 0.9, 0.6, 0.3, 0.6 (class 1 has the rest); logits = log-probabilities.
    p0 = torch.tensor([0.9, 0.6, 0.3, 0.6])
    logits = torch.stack([p0.log(), (1 - p0).log()]).view(1, 2, 1, 4)
    # labels 0, 0, 1, 0; confidences 0.9, 0.6, 0.7, 0.6.
    # rho = 0.5: class 0 has N = 3, K = ceil(1.5) = 2, threshold = 2nd largest = 0.6 -> both 0.6 pixels tie and
    # are kept (3 pixels); class 1 has N = 1, K = 1 -> kept.
    sel = reference.confidence_select(logits, 0.5)
    assert sel.labels.tolist() == [[[0, 0, 1, 0]]]
    assert sel.counts.tolist() == [[3, 1]]
    torch.testing.assert_close(sel.confidence, torch.tensor([[[0.9, 0.6, 0.7, 0.6]]]))
    torch.testing.assert_close(sel.conf_sums, torch.tensor([[2.1, 0.7]]))
    torch.testing.assert_close(sel.tau, torch.tensor([[math.sqrt(3 / 2.1), math.sqrt(1 / 0.7)]]))
    # rho = 0.3: class 0 K = ceil(0.9) = 1 -> only the 0.9 pixel; class 1 K = ceil(0.3) = 1.
    sel = reference.confidence_select(logits, 0.3)
    assert sel.labels.tolist() == [[[0, IGNORE, 1, IGNORE]]]
    assert sel.confidence[0, 0, 1].item() == 0.0
    assert sel.counts.tolist() == [[1, 1]]
    # rho = 0 keeps nothing; tau of an empty class is 0.
    sel = reference.confidence_select(logits, 0.0)
    assert (sel.labels == IGNORE).all() and sel.counts.sum() == 0 and (sel.tau == 0).all()


def _set_stack(disc: SeparatedDiscriminator, per_class: list[list[tuple[float, float, float]]]) -> None:
    """per_class[c][l] = (center tap, right-neighbour tap, bias) of class c's layer l (n = 1, one channel each)."""
    with torch.no_grad():
        for layer, conv in enumerate(disc.convs):
            conv.weight.zero_()
            for c, layers in enumerate(per_class):
                center, right, bias = layers[layer]
                if layer == 0:
                    conv.weight[c, 0, 0, 0] = center
                else:
                    conv.weight[c, 0, 1, 1] = center
                    conv.weight[c, 0, 1, 2] = right  # cross-correlation: tap (1, 2) reads column j + 1
                conv.bias[c] = bias


@pytest.mark.parametrize("backend", ["reference", "grouped"])
def test_ssd_one_class_by_hand(backend):
    disc = SeparatedDiscriminator(1, in_channels=1, channels=(1, 1, 1, 1), strides=(1, 1, 1, 1, 1), backend=backend)
    _set_stack(disc, [[(2, 0, -1), (1, 0.5, 0), (2, 0, 0.1), (1, 1, 0), (-1, 0, 0.5)]])
    features = torch.tensor([[[[1.0, -3.0]]]])
    # L1: 2x - 1 = [1, -7] -> lrelu [1, -1.4]; L2: [1 + 0.5 * -1.4, -1.4 + 0.5 * 0] = [0.3, -1.4] -> [0.3, -0.28]
    # L3: 2a + 0.1 = [0.7, -0.46] -> [0.7, -0.092]; L4: [0.7 - 0.092, -0.092] -> [0.608, -0.0184]
    # L5: -a + 0.5 = [-0.108, 0.5184]
    out = disc(features, torch.tensor([[[0, 0]]]))
    torch.testing.assert_close(out.logits, torch.tensor([[[[-0.108, 0.5184]]]]))
    assert out.labels.tolist() == [[[0, 0]]]
    # With pixel 1 IGNORE its feature is zeroed: L1 [1, -1] -> [1, -0.2]; L2 [0.9, -0.2] -> [0.9, -0.04];
    # L3 [1.9, 0.02]; L4 [1.92, 0.02]; L5 [-1.42, 0.48]; the IGNORE output cell reads 0.
    out = disc(features, torch.tensor([[[0, IGNORE]]]))
    torch.testing.assert_close(out.logits, torch.tensor([[[[-1.42, 0.0]]]]))
    assert out.labels.tolist() == [[[0, IGNORE]]]


@pytest.mark.parametrize("backend", ["reference", "grouped"])
def test_ssd_three_classes_by_hand(backend):
    disc = SeparatedDiscriminator(3, in_channels=1, channels=(1, 1, 1, 1), strides=(1, 1, 1, 1, 1), backend=backend)
    _set_stack(disc, [
        [(1, 0, 0), (1, 1, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0)],  # class 0: L2 adds the right neighbour
        [(-1, 0, 0.5), (2, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 1)],  # class 1
        [(3, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0)],  # class 2: absent from the labels
    ])
    # Labels at twice the feature resolution: bins of 2x2 pixels.
    # cell 0 {0, 0, 0, 255} -> 0; cell 1 {1, 2, 1, 2} -> tie -> 1; cell 2 {0, 1, 0, 0} -> 0.
    labels = torch.tensor([[[0, 0, 1, 2, 0, 1],
                            [0, 255, 1, 2, 0, 0]]])
    features = torch.tensor([[[[1.0, 2.0, 3.0]]]], requires_grad=True)
    # The output keeps the (1, 3) size (strides 1), so the output labels equal the feature labels [0, 1, 0].
    # Class 0 sees X0 = [1, 0, 3]: L1 [1, 0, 3]; L2 a_j + a_{j+1} = [1, 3, 3]; L3-L5 identity -> [1, 3, 3].
    #   Separation matters: without it cell 0 would read 1 + 2 = 3.
    # Class 1 sees X1 = [0, 2, 0]: L1 -x + 0.5 = [0.5, -1.5, 0.5] -> [0.5, -0.3, 0.5]; L2 x2 -> [1, -0.12, 1];
    #   L3 -> [1, -0.024, 1]; L4 -> [1, -0.0048, 1]; L5 +1 -> [2, 0.9952, 2].
    # Output: cell 0 <- class 0 (1), cell 1 <- class 1 (0.9952), cell 2 <- class 0 (3).
    out = disc(features, labels)
    assert out.labels.tolist() == [[[0, 1, 0]]]
    torch.testing.assert_close(out.logits, torch.tensor([[[[1.0, 0.9952, 3.0]]]]))
    # d(sum of logits)/d features: x0 -> cell 0 through class 0 (1); x2 -> cell 2 through class 0 (1);
    # x1 -> cell 1 through class 1: -1 * 0.2 (L1) * 2 * 0.2 (L2) * 0.2 (L3) * 0.2 (L4) * 1 = -0.0032.
    out.logits.sum().backward()
    torch.testing.assert_close(features.grad, torch.tensor([[[[1.0, -0.0032, 1.0]]]]))


def test_car_weights_and_losses_by_hand():
    labels = torch.tensor([[[0, IGNORE], [1, 1]]])
    tau = torch.tensor([[0.5, 2.0]])
    assert reference.car_weights(tau, labels).tolist() == [[[0.5, 0.0], [2.0, 2.0]]]
    assert reference.car_weights(None, labels).tolist() == [[[1.0, 0.0], [1.0, 1.0]]]
    logits = torch.tensor([[[[0.0, 5.0], [2.0, -1.0]]]])
    out = DiscriminatorOutput(logits, labels)
    log2 = math.log(2.0)
    # Target 0: bce(x, 0) = log(1 + e^x). Cells: 0 -> log 2 (w 0.5), ignored, 2 -> log(1 + e^2) (w 2),
    # -1 -> log(1 + e^-1) (w 2); divided by the 3 labelled cells.
    expected = (0.5 * log2 + 2 * math.log1p(math.exp(2)) + 2 * math.log1p(math.exp(-1))) / 3
    assert reference.adversarial_loss(out, tau).item() == pytest.approx(expected, rel=1e-6)
    # Target 1: bce(x, 1) = log(1 + e^-x); unweighted mean over the 3 labelled cells.
    expected_t = (log2 + math.log1p(math.exp(-2)) + math.log1p(math.exp(1))) / 3
    assert reference.weighted_bce(out, 1.0, reference.car_weights(None, labels)).item() == pytest.approx(expected_t)
    expected_d = 0.5 * ((log2 + math.log1p(math.exp(2)) + math.log1p(math.exp(-1))) / 3 + expected_t)
    assert reference.discriminator_loss(out, out).item() == pytest.approx(expected_d, rel=1e-6)


def test_all_ignore_loss_divides_by_one():
    out = DiscriminatorOutput(torch.zeros(1, 1, 2, 2), torch.full((1, 2, 2), IGNORE))
    assert reference.adversarial_loss(out).item() == 0.0


@pytest.mark.parametrize("it,total,expected", [(0, 100, 0.0), (50, 100, 0.5), (80, 100, 0.8), (99, 100, 0.8)])
def test_rho_schedule(it, total, expected):
    assert rho_schedule(it, total) == pytest.approx(expected)


def test_rho_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="total_iters"):
        rho_schedule(1, 0)
    with pytest.raises(ValueError, match="iteration"):
        rho_schedule(-1, 10)
    with pytest.raises(ValueError, match="rho"):
        rho_schedule(1, 10, rho_upper=1.5)


def test_output_size_follows_conv_arithmetic():
    # 65 -> 65 (1x1) -> 33 -> 17 -> 9 -> 5 and 129 -> 65 -> 33 -> 17 -> 9.
    assert output_size(65, 129, (1, 2, 2, 2, 2)) == (5, 9)
    assert output_size(7, 1, (1, 2, 1, 2, 1)) == (2, 1)
