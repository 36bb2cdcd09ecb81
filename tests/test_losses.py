"""Public losses against a per-cell computation, CA-R weighting of both domains, and argument checks."""
from __future__ import annotations

import math

import pytest
import torch

import ssfdan_ext
from ssfdan_ext import IGNORE, DiscriminatorOutput, SeparatedDiscriminator


def _outputs(B=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (B, 4, 5), generator=gen)
    labels[:, 0] = IGNORE
    return DiscriminatorOutput(torch.randn(B, 1, 4, 5, generator=gen).requires_grad_(True), labels)


def _per_cell(output, target, tau):
    """sum over labelled cells of w * BCE(x, target), divided by the labelled-cell count, one cell at a time."""
    total, labelled = 0.0, 0
    for b, i, j in torch.cartesian_prod(*(torch.arange(s) for s in output.labels.shape)).tolist():
        c = int(output.labels[b, i, j])
        if c == IGNORE:
            continue
        x = float(output.logits.detach()[b, 0, i, j])
        bce = math.log1p(math.exp(-x)) if target == 1 else math.log1p(math.exp(x))
        total += (1.0 if tau is None else float(tau[b, c])) * bce
        labelled += 1
    return total / max(labelled, 1)


@pytest.mark.parametrize("with_tau", [False, True])
def test_losses_match_a_per_cell_computation(with_tau):
    out_t, out_s = _outputs(seed=0), _outputs(seed=1)
    tau = torch.rand(2, 3, generator=torch.Generator().manual_seed(2)) if with_tau else None
    loss = ssfdan_ext.adversarial_loss(out_t, tau)
    assert loss.item() == pytest.approx(_per_cell(out_t, 0, tau), rel=1e-6)
    d = ssfdan_ext.discriminator_loss(out_s, out_t, tau)
    expected = 0.5 * (_per_cell(out_s, 0, tau) + _per_cell(out_t, 1, tau))
    assert d.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert (out_t.logits.grad[:, :, 0] == 0).all() and (out_t.logits.grad[:, :, 1:] != 0).any()


def test_target_tau_weights_the_source_cells():
    # Source cells of class 1 weigh tau[1] = 3, class 0 weighs tau[0] = 0 (no kept target pixel of class 0).
    source = DiscriminatorOutput(torch.zeros(1, 1, 1, 2), torch.tensor([[[0, 1]]]))
    target = DiscriminatorOutput(torch.zeros(1, 1, 1, 2), torch.tensor([[[IGNORE, 1]]]))
    tau = torch.tensor([[0.0, 3.0]])
    log2 = math.log(2.0)
    # source: (0 * log 2 + 3 * log 2) / 2 labelled cells; target: 3 * log 2 / 1 labelled cell.
    expected = 0.5 * (3 * log2 / 2 + 3 * log2)
    assert ssfdan_ext.discriminator_loss(source, target, tau).item() == pytest.approx(expected, rel=1e-6)


def test_end_to_end_training_step_changes_the_discriminator():
    torch.manual_seed(0)
    disc = SeparatedDiscriminator(3, 4, (4, 4, 4, 4))
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    f_s, f_t = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    sel = ssfdan_ext.confidence_select(torch.randn(1, 3, 32, 32), 0.5)
    lab_s = ssfdan_ext.confidence_select(torch.randn(1, 3, 32, 32), 0.5).labels

    def loss():
        return ssfdan_ext.discriminator_loss(disc(f_s, lab_s), disc(f_t, sel.labels), sel.tau)

    before = loss().item()
    for _ in range(20):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < before  # the discriminator learns to tell the two fixed inputs apart


def test_loss_errors():
    out = _outputs()
    with pytest.raises(TypeError, match="DiscriminatorOutput"):
        ssfdan_ext.adversarial_loss(out.logits)
    with pytest.raises(ValueError, match=r"must be \(B, 1, h', w'\)"):
        ssfdan_ext.adversarial_loss(DiscriminatorOutput(torch.randn(2, 2, 4, 5), out.labels))
    with pytest.raises(TypeError, match="target_output.labels must be int64"):
        ssfdan_ext.adversarial_loss(DiscriminatorOutput(out.logits, out.labels.int()))
    with pytest.raises(TypeError, match="target_output.logits must be a floating-point"):
        ssfdan_ext.adversarial_loss(DiscriminatorOutput(out.labels.unsqueeze(1), out.labels))
    bad = out.labels.clone()
    bad[0, 1, 1] = -1
    with pytest.raises(ValueError, match=r"target_output.labels must lie in .* found -1"):
        ssfdan_ext.adversarial_loss(DiscriminatorOutput(out.logits, bad))
    with pytest.raises(ValueError, match=r"target_output.labels must lie in \[0, 2\)"):
        ssfdan_ext.adversarial_loss(out, torch.rand(2, 2))
    with pytest.raises(ValueError, match="one row per image"):
        ssfdan_ext.adversarial_loss(out, torch.rand(3, 3))
    with pytest.raises(ValueError, match=r"tau must be \(B, C\)"):
        ssfdan_ext.adversarial_loss(out, torch.rand(2))
    with pytest.raises(ValueError, match="one device"):
        ssfdan_ext.adversarial_loss(out, torch.rand(2, 3, device="meta"))
    with pytest.raises(ValueError, match="one device"):
        ssfdan_ext.adversarial_loss(DiscriminatorOutput(out.logits, out.labels.to("meta")))
    with pytest.raises(ValueError, match="same batch size"):
        ssfdan_ext.discriminator_loss(_outputs(1), out)


@pytest.mark.parametrize("with_tau", [False, True])
def test_domain_loss_halves_sum_to_the_discriminator_loss(with_tau):
    gen = torch.Generator().manual_seed(3)
    labels_s = torch.randint(0, 4, (2, 3, 5), generator=gen)
    labels_t = torch.randint(0, 4, (2, 3, 5), generator=gen)
    labels_s[0, 0] = ssfdan_ext.IGNORE
    logits_s = torch.randn(2, 1, 3, 5, generator=gen, requires_grad=True)
    logits_t = torch.randn(2, 1, 3, 5, generator=gen, requires_grad=True)
    tau = torch.rand(2, 4, generator=gen) if with_tau else None
    out_s, out_t = DiscriminatorOutput(logits_s, labels_s), DiscriminatorOutput(logits_t, labels_t)
    joint = ssfdan_ext.discriminator_loss(out_s, out_t, tau)
    halves = ssfdan_ext.domain_loss(out_s, 0, tau) + ssfdan_ext.domain_loss(out_t, 1, tau)
    torch.testing.assert_close(halves, joint)
    g_joint = torch.autograd.grad(joint, (logits_s, logits_t))
    g_halves = torch.autograd.grad(halves, (logits_s, logits_t))
    for a, b in zip(g_halves, g_joint):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="domain must be 0"):
        ssfdan_ext.domain_loss(out_s, 2, tau)
