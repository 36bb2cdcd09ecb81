"""torch.compile on a whole SSF-DAN training step: the compiled step equals the eager one, and the graph breaks
happen only where the data decides the sizes (the fused backend's rulebook). A new break fails a test here."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
import torch._inductor.config
from torch._dynamo.utils import counters

import ssfdan_ext as sd
from ssfdan_ext import IGNORE
from ssfdan_ext.ops.sparse_ssd import sparse_ssd_forward

from conftest import CUDA, label_layout, require_triton, subprocess_env

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


def test_triton_kernels_are_traced_into_the_graph():
    """The layer ops are triton_ops: AOTAutograd (under torch.compile) decomposes them into their Triton launches,
    forward and backward, which Inductor then compiles with the graph; no opaque ssfdan_ext op is left. Traced on
    fake CUDA tensors, so no GPU is needed."""
    require_triton()
    script = os.path.join(os.path.dirname(__file__), "trace_triton_ops.py")
    proc = subprocess.run([sys.executable, script], env=subprocess_env(TRITON_INTERPRET="0"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report == {
        "routed_conv1x1": ["triton:_routed_gemm_kernel"],
        "routed_conv1x1_grad": ["triton:_routed_gemm_kernel", "triton:_routed_grad_weight_kernel"],
        "sparse_conv3x3": ["triton:_sparse_conv_fwd_kernel"],
        "sparse_conv3x3_grad": ["triton:_sparse_conv_grad_table_kernel", "triton:_sparse_conv_grad_weight_kernel"],
    }


def _sparse_ssd_inputs(device: str, seed: int = 0):
    torch.manual_seed(seed)
    disc = sd.SeparatedDiscriminator(C, in_channels=N_FEAT, channels=(5, 4, 4, 3), strides=(1, 2, 1, 2, 1),
                                     backend="fused").to(device)
    features = torch.randn(2, N_FEAT, 10, 11, device=device, requires_grad=True)
    lf = label_layout("random", 2, 10, 11, C, seed).to(device)
    lo = sd.mode_downsample(lf, disc.output_size(10, 11), C)
    return disc, features, lf, lo


def _sparse_ssd_loss(disc, features, lf, lo, impl):
    weights = [conv.weight for conv in disc.convs]
    biases = [conv.bias for conv in disc.convs]
    out = sparse_ssd_forward(features, lf, lo, weights, biases, disc.strides, C, impl=impl)
    return (out * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum()


def _loss_and_grads(loss_fn, disc, features, *args):
    disc.zero_grad(set_to_none=True)
    features.grad = None
    loss = loss_fn(disc, features, *args)
    loss.backward()
    return loss.detach(), [features.grad.clone(), *(p.grad.clone() for p in disc.parameters())]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the Triton kernels are compiled in this run")
def test_compiled_sparse_ssd_with_interpreted_triton_kernels():
    """Under TRITON_INTERPRET=1 the Triton kernels compute on host memory in Python and cannot be traced: each layer
    then runs inside its opaque ``_interpreted`` op, and the compiled evaluation equals the eager one."""
    require_triton()
    disc, features, lf, lo = _sparse_ssd_inputs("cpu")
    eager = _loss_and_grads(_sparse_ssd_loss, disc, features, lf, lo, "triton")
    torch._dynamo.reset()
    compiled = _loss_and_grads(torch.compile(_sparse_ssd_loss), disc, features, lf, lo, "triton")
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(compiled[1], eager[1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", [CUDA])
def test_compiled_training_step_on_the_gpu_equals_eager(device):
    """On a GPU, Inductor compiles the fused backend's Triton kernels into the step: the compiled step equals the
    eager one, and the only breaks are the rulebook's."""
    model, disc = _nets("fused")
    model, disc = model.to(device), disc.to(device)
    batch = tuple(t.to(device) for t in _batch())
    eager = _run(training_step, model, disc, batch)
    loss, grads, breaks = _compiled_run(training_step, model, disc, batch)
    _assert_same(eager, (loss, grads))
    assert _breaks_outside_the_rulebook(breaks) == {}, breaks


def test_forward_on_a_prebuilt_plan_compiles_without_a_break():
    """The plan holds everything the labels decide: a compiled forward + backward on it is one graph."""
    _, disc = _nets("fused")
    labels = label_layout("random", 2, 10, 11, C, 0)
    plan = disc.plan(labels, (10, 11))
    features = torch.randn(2, N_FEAT, 10, 11, requires_grad=True)
    eager = disc(features, plan=plan).logits
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: disc(x, plan=plan).logits, fullgraph=True)(features)  # a break would raise
    torch.testing.assert_close(compiled, eager)
    (grad,) = torch.autograd.grad(compiled.sum(), features)
    (want,) = torch.autograd.grad(eager.sum(), features)
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6)
