"""torch.compile on a whole SSF-DAN training step: the compiled step equals the eager one, and the graph breaks
happen only where the data decides the sizes (the fused backend's rulebook). A new break fails a test here."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
import torch._inductor.config
from torch._dynamo.utils import counters

import ssfdan_ext as sd
from ssfdan_ext import IGNORE

C, N_FEAT = 4, 6
# The break every rulebook build makes (its pair counts are data-dependent sizes) unless the user lets dynamo
# capture such ops (torch._dynamo.config.capture_dynamic_output_shape_ops).
RULEBOOK_BREAK = "ssfdan_ext.sparse_ssd_rulebook"


class Segmenter(nn.Module):
    """(logits, features) at 1/4 of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, N_FEAT, 4, stride=4)
        self.head = nn.Conv2d(N_FEAT, C, 1)

    def forward(self, x):
        features = F.relu(self.body(x))
        return self.head(features), features


def _nets(backend: str):
    torch.manual_seed(0)
    disc = sd.SeparatedDiscriminator(C, in_channels=N_FEAT, channels=(5, 4, 4, 3), strides=(1, 2, 1, 2, 1),
                                     backend=backend)
    return Segmenter(), disc


def _batch():
    gen = torch.Generator().manual_seed(1)
    img_s, img_t = torch.randn(2, 3, 40, 44, generator=gen), torch.randn(2, 3, 40, 44, generator=gen)
    lbl_s = torch.randint(0, C, (2, 40, 44), generator=gen)
    lbl_s[:, :4] = IGNORE
    return img_s, lbl_s, img_t


def training_step(model, disc, img_s, lbl_s, img_t, rho: float = 0.5):
    """The losses of one iteration (paper section 3 / docs: training): segmentation, the generator's adversarial
    pass and the discriminator's two passes, the target plan built once for both target passes."""
    logits_s, feat_s = model(img_s)
    pred_s = F.interpolate(logits_s, size=lbl_s.shape[-2:], mode="bilinear", align_corners=True)
    loss_seg = F.cross_entropy(pred_s, lbl_s, ignore_index=IGNORE)
    logits_t, feat_t = model(img_t)
    h, w = feat_t.shape[-2:]
    sel_t = sd.confidence_select(logits_t.detach(), rho, out_sizes=((h, w), disc.output_size(h, w)))
    plan_t = disc.plan(sel_t.labels, (h, w), label_maps=sel_t.downsampled)
    loss_adv = sd.adversarial_loss(disc(feat_t, plan=plan_t), sel_t.tau)
    loss_d = sd.discriminator_loss(disc(feat_s.detach(), lbl_s), disc(feat_t.detach(), plan=plan_t), sel_t.tau)
    return loss_seg + 0.01 * loss_adv + loss_d


def _run(step, model, disc, batch):
    model.zero_grad(set_to_none=True)
    disc.zero_grad(set_to_none=True)
    loss = step(model, disc, *batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in [*model.named_parameters(),
                                                                *disc.named_parameters()]}


def _compiled_run(step, model, disc, batch):
    torch._dynamo.reset()
    counters.clear()
    loss, grads = _run(torch.compile(step), model, disc, batch)
    return loss, grads, dict(counters["graph_break"])


def _assert_same(eager, compiled):
    (loss_e, grads_e), (loss_c, grads_c) = eager, compiled
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(autouse=True)
def _no_compiled_code_cache():
    """Compile every graph afresh: a code cache left by an earlier build of the ops could call them with an old
    signature (Inductor's cache key does not cover a custom op's schema)."""
    with torch._inductor.config.patch(fx_graph_cache=False):
        yield


def _breaks_outside_the_rulebook(breaks: dict[str, int]) -> dict[str, int]:
    return {reason: n for reason, n in breaks.items() if RULEBOOK_BREAK not in reason}


@pytest.mark.parametrize("backend", ["reference", "grouped", "fused"])
def test_compiled_training_step_equals_eager(backend):
    model, disc = _nets(backend)
    batch = _batch()
    eager = _run(training_step, model, disc, batch)
    loss, grads, breaks = _compiled_run(training_step, model, disc, batch)
    _assert_same(eager, (loss, grads))
    assert _breaks_outside_the_rulebook(breaks) == {}, breaks
    rulebook_breaks = sum(breaks.values())
    if backend == "fused":
        # Two rulebooks per step (the source forward and the target plan); dynamo may count a break again when it
        # resumes, but never zero: the sizes come from the labels.
        assert rulebook_breaks >= 2, breaks
    else:
        assert rulebook_breaks == 0, breaks


def test_fused_step_has_no_break_when_dynamic_output_shapes_are_captured():
    model, disc = _nets("fused")
    batch = _batch()
    eager = _run(training_step, model, disc, batch)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        loss, grads, breaks = _compiled_run(training_step, model, disc, batch)
    _assert_same(eager, (loss, grads))
    assert breaks == {}


def test_compiled_segmenter_with_the_discriminator_outside():
    model, disc = _nets("fused")
    batch = _batch()
    eager = _run(training_step, model, disc, batch)
    torch._dynamo.reset()
    counters.clear()
    compiled_model = torch.compile(model)
    loss, grads = _run(training_step, compiled_model, disc, batch)
    _assert_same(eager, (loss, {name.removeprefix("_orig_mod."): g for name, g in grads.items()}))
    assert dict(counters["graph_break"]) == {}


def test_invalid_labels_fail_inside_a_compiled_step():
    """Under torch.compile the Python label checks become device-side asserts (no graph break) and the kernels
    check the values they read: a bad label still fails the call."""
    model, disc = _nets("grouped")
    img_s, lbl_s, img_t = _batch()
    lbl_s[0, 10, 10] = C  # not a class and not IGNORE
    torch._dynamo.reset()
    with pytest.raises((RuntimeError, ValueError), match=r"must lie in \[0, 4\) or equal 255"):
        torch.compile(training_step)(model, disc, img_s, lbl_s, img_t)


def test_python_label_check_is_a_device_assert_when_compiled():
    logits = torch.randn(1, 1, 3, 3)
    labels = torch.zeros(1, 3, 3, dtype=torch.int64)
    loss = torch.compile(lambda out: sd.domain_loss(out, 1), fullgraph=True)  # fullgraph: a break would raise
    torch._dynamo.reset()
    assert torch.isfinite(loss(sd.DiscriminatorOutput(logits, labels)))
    labels[0, 1, 1] = -1
    with pytest.raises(RuntimeError, match=r"output.labels must lie in \[0, 255\) or equal 255"):
        loss(sd.DiscriminatorOutput(logits, labels))
