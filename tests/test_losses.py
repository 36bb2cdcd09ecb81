"""Public losses: argument checks and agreement with the reference."""
from __future__ import annotations

import pytest
import torch

import ssfdan_ext
from ssfdan_ext import IGNORE, DiscriminatorOutput, SeparatedDiscriminator, reference


def _outputs(B=2):
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (B, 4, 5))
    labels[:, 0] = IGNORE
    return DiscriminatorOutput(torch.randn(B, 1, 4, 5, requires_grad=True), labels)


def test_losses_match_reference_and_backpropagate():
    out_t, out_s = _outputs(), _outputs()
    tau = torch.rand(2, 3)
    loss = ssfdan_ext.adversarial_loss(out_t, tau)
    assert loss.item() == pytest.approx(reference.adversarial_loss(out_t, tau).item())
    loss.backward()
    assert out_t.logits.grad is not None and (out_t.logits.grad[:, :, 0] == 0).all()  # IGNORE cells get nothing
    d = ssfdan_ext.discriminator_loss(out_s, out_t, tau)
    assert d.item() == pytest.approx(reference.discriminator_loss(out_s, out_t, tau).item())


def test_end_to_end_training_step_changes_the_discriminator():
    torch.manual_seed(0)
    disc = SeparatedDiscriminator(3, 4, (4, 4, 4, 4))
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    f_s, f_t = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    logits_t = torch.randn(1, 3, 32, 32)
    sel = ssfdan_ext.confidence_select(logits_t, 0.5)
    lab_s = ssfdan_ext.confidence_select(torch.randn(1, 3, 32, 32), 0.5).labels
    before = ssfdan_ext.discriminator_loss(disc(f_s, lab_s), disc(f_t, sel.labels), sel.tau).item()
    for _ in range(20):
        opt.zero_grad()
        ssfdan_ext.discriminator_loss(disc(f_s, lab_s), disc(f_t, sel.labels), sel.tau).backward()
        opt.step()
    after = ssfdan_ext.discriminator_loss(disc(f_s, lab_s), disc(f_t, sel.labels), sel.tau).item()
    assert after < before  # the discriminator learns to tell the two fixed inputs apart


def test_loss_errors():
    out = _outputs()
    with pytest.raises(TypeError, match="DiscriminatorOutput"):
        ssfdan_ext.adversarial_loss(out.logits)
    with pytest.raises(ValueError, match=r"must be \(B, 1, h', w'\)"):
        ssfdan_ext.adversarial_loss(DiscriminatorOutput(torch.randn(2, 2, 4, 5), out.labels))
    with pytest.raises(ValueError, match="one row per image"):
        ssfdan_ext.adversarial_loss(out, torch.rand(3, 3))
    with pytest.raises(ValueError, match=r"tau must be \(B, C\)"):
        ssfdan_ext.adversarial_loss(out, torch.rand(2))
    with pytest.raises(ValueError, match="tau has 2 classes"):
        ssfdan_ext.adversarial_loss(out, torch.rand(2, 2))
    with pytest.raises(ValueError, match="same batch size"):
        ssfdan_ext.discriminator_loss(_outputs(1), out)
