"""SeparatedDiscriminator: every backend against the reference, gradients, layout and argument errors."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEVICES, assert_close_scaled, compare_backends, label_layout, subprocess_env

from ssfdan_ext import IGNORE, SeparatedDiscriminator, discriminator_loss

N, CHANNELS = 4, (6, 5, 4, 3)
STRIDES = [(1, 2, 2, 2, 2), (1, 1, 1, 1, 1)]


GRID = list(itertools.product([1, 2], [1, 3, 19], STRIDES))


BACKENDS = ["grouped", "fused"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,C,strides", GRID)
@pytest.mark.parametrize("size", [(7, 9, 15, 19), (5, 12, 40, 96)])  # (h, w, H, W): odd and non-divisible
def test_backend_matches_reference(backend, device, B, C, strides, size):
    h, w, H, W = size
    torch.manual_seed(B * 100 + C)
    disc = SeparatedDiscriminator(C, N, CHANNELS, strides).to(device)
    features = torch.randn(B, N, h, w, device=device)
    labels = label_layout("random", B, H, W, C, seed=C).to(device)
    ref = compare_backends(disc, features, labels, backend)
    assert ref.logits.shape == (B, 1, *disc.output_size(h, w))
    assert (ref.labels != IGNORE).any() and (ref.logits != 0).any()  # the comparison is not between zeros


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["all_ignore", "class_absent", "street", "checkerboard"])
@pytest.mark.parametrize("strides", STRIDES)
def test_backend_matches_reference_on_layouts(backend, device, kind, strides):
    torch.manual_seed(0)
    C = 19 if kind in ("street", "checkerboard") else 3
    disc = SeparatedDiscriminator(C, N, CHANNELS, strides).to(device)
    features = torch.randn(2, N, 12, 20, device=device)
    labels = label_layout(kind, 2, 96, 160, C, seed=5).to(device)
    ref = compare_backends(disc, features, labels, backend)
    if kind == "all_ignore":
        assert (ref.labels == IGNORE).all() and (ref.logits == 0).all()
    if kind == "class_absent":
        assert not (ref.labels == 0).any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_features(backend, device):
    torch.manual_seed(1)
    disc = SeparatedDiscriminator(3, N, CHANNELS).to(device)
    features = torch.randn(2, 9, 7, N, device=device).permute(0, 3, 2, 1)  # (2, N, 7, 9), channels-last strides
    assert not features.is_contiguous()
    labels = label_layout("random", 2, 14, 18, 3, seed=2).to(device)
    ref = compare_backends(disc, features, labels, backend)
    contiguous = disc(features.contiguous(), labels)
    assert_close_scaled(contiguous.logits, ref.logits.detach(), "contiguous vs strided")


@pytest.mark.parametrize("backend", BACKENDS)
def test_features_equal_label_resolution_and_one_pixel(backend):
    disc = SeparatedDiscriminator(2, N, CHANNELS)
    compare_backends(disc, torch.randn(1, N, 1, 1), torch.tensor([[[1]]]), backend)
    compare_backends(disc, torch.randn(1, N, 3, 5), label_layout("random", 1, 3, 5, 2, seed=4), backend)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("strides", STRIDES)
def test_gradcheck_float64(backend, strides):
    torch.manual_seed(2)
    disc = SeparatedDiscriminator(3, 2, (3, 2, 2, 2), strides, backend=backend).double()
    features = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[[0, 0, 1, 1, 2, 255, 2, 2],
                            [0, 1, 1, 1, 2, 2, 2, 0],
                            [255, 255, 0, 1, 2, 2, 1, 1],
                            [0, 0, 0, 1, 1, 2, 2, 2],
                            [1, 1, 0, 0, 2, 2, 1, 1],
                            [1, 1, 0, 0, 2, 2, 255, 1]]])
    names = [n for n, _ in disc.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in disc.parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(disc, dict(zip(names, ps)), (x, labels)).logits

    assert torch.autograd.gradcheck(fn, (features, *params), eps=1e-6, atol=1e-7)


def test_canonical_parameter_layout():
    disc = SeparatedDiscriminator(19)
    shapes = {k: tuple(v.shape) for k, v in disc.state_dict().items()}
    assert shapes == {
        "convs.0.weight": (19 * 1024, 2048, 1, 1), "convs.0.bias": (19 * 1024,),
        "convs.1.weight": (19 * 512, 1024, 3, 3), "convs.1.bias": (19 * 512,),
        "convs.2.weight": (19 * 256, 512, 3, 3), "convs.2.bias": (19 * 256,),
        "convs.3.weight": (19 * 128, 256, 3, 3), "convs.3.bias": (19 * 128,),
        "convs.4.weight": (19 * 1, 128, 3, 3), "convs.4.bias": (19,),
    }
    assert [c.stride for c in disc.convs] == [(1, 1), (2, 2), (2, 2), (2, 2), (2, 2)]
    assert [c.groups for c in disc.convs] == [19] * 5
    assert disc.output_size(65, 129) == (5, 9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_moves_between_backends(backend):
    torch.manual_seed(3)
    a = SeparatedDiscriminator(3, N, CHANNELS, backend="reference")
    b = SeparatedDiscriminator(3, N, CHANNELS, backend=backend)
    b.load_state_dict(a.state_dict())
    features, labels = torch.randn(1, N, 6, 6), label_layout("random", 1, 12, 12, 3, seed=1)
    assert_close_scaled(b(features, labels).logits, a(features, labels).logits.detach(), "logits")


def test_backend_selection():
    disc = SeparatedDiscriminator(2, N, CHANNELS)
    assert disc.backend == "auto"
    assert disc.resolve_backend(torch.device("cpu")) == "fused"  # the compiled extension is loaded
    assert disc.resolve_backend(torch.device("cuda")) == "fused"  # Triton comes with the CUDA build of torch
    assert disc.resolve_backend(torch.device("meta")) == "reference"  # no fused kernels there
    disc.backend = "grouped"
    assert disc.resolve_backend(torch.device("cpu")) == "grouped"
    with pytest.raises(ValueError, match="backend must be one of"):
        disc.backend = "fast"
    assert "backend='grouped'" in repr(disc)


@pytest.mark.parametrize("kwargs,match", [
    ({"num_classes": 0}, r"num_classes must be in \[1, 255\]"),
    ({"num_classes": 256}, r"num_classes must be in \[1, 255\]"),
    ({"channels": (8, 8, 8)}, "widths of layers 1-4"),
    ({"channels": (8, 0, 8, 8)}, "positive ints"),
    ({"strides": (2, 2, 2, 2, 2)}, "strides must be 5 ints"),
    ({"strides": (1, 3, 2, 2, 2)}, "strides must be 5 ints"),
    ({"strides": (1, 2, 2, 2)}, "strides must be 5 ints"),
    ({"backend": "cuda"}, "backend must be one of"),
])
def test_constructor_errors(kwargs, match):
    args = {"num_classes": 3, "in_channels": N, "channels": CHANNELS, **kwargs}
    with pytest.raises(ValueError, match=match):
        SeparatedDiscriminator(**args)


GOOD_F = (2, N, 4, 6)
GOOD_L = (2, 8, 12)


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("features,labels,error,match", [
    (torch.randn(N, 4, 6), torch.zeros(GOOD_L, dtype=torch.long), ValueError, r"features must be \(B, n, h, w\)"),
    (torch.randn(GOOD_F), torch.zeros(8, 12, dtype=torch.long), ValueError, r"labels must be \(B, H, W\)"),
    (torch.randn(GOOD_F), torch.zeros(3, 8, 12, dtype=torch.long), ValueError, "same batch size, got 2 and 3"),
    (torch.randn(GOOD_F), torch.full(GOOD_L, 7, dtype=torch.long), ValueError, r"labels must lie in \[0, 3\).*7"),
    (torch.randn(GOOD_F), torch.full(GOOD_L, -1, dtype=torch.long), ValueError, r"labels must lie in .*-1"),
    (torch.randn(2, N + 1, 4, 6), torch.zeros(GOOD_L, dtype=torch.long), ValueError, "in_channels=4"),
    (torch.randn(GOOD_F), torch.zeros(2, 3, 12, dtype=torch.long), ValueError, "at least as large as the features"),
    (torch.randn(GOOD_F), torch.zeros(2, 8, 5, dtype=torch.long), ValueError, "at least as large as the features"),
    (torch.ones(GOOD_F, dtype=torch.int64), torch.zeros(GOOD_L, dtype=torch.long), TypeError, "floating-point"),
    (torch.randn(GOOD_F), torch.zeros(GOOD_L), TypeError, "labels must be int64, got torch.float32"),
    (torch.randn(0, N, 4, 6), torch.zeros(0, 8, 12, dtype=torch.long), ValueError,
     r"every dimension non-zero, got shape \(0, "),
    (torch.randn(GOOD_F, dtype=torch.float64), torch.zeros(GOOD_L, dtype=torch.long), TypeError, "dtype torch.float64"),
    (torch.randn(GOOD_F), torch.zeros(GOOD_L, dtype=torch.long, device="meta"), ValueError, "one device"),
    ([[1.0]], torch.zeros(GOOD_L, dtype=torch.long), TypeError, "features must be a torch.Tensor"),
])
def test_forward_errors(backend, features, labels, error, match):
    disc = SeparatedDiscriminator(3, N, CHANNELS, backend=backend)
    with pytest.raises(error, match=match):
        disc(features, labels)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_label_maps_from_confidence_select_give_the_same_output(device, backend):
    from ssfdan_ext import confidence_select

    torch.manual_seed(0)
    C = 5
    disc = SeparatedDiscriminator(C, N, CHANNELS, backend=backend).to(device)
    features = torch.randn(2, N, 9, 13, device=device)
    logits = torch.randn(2, C, 36, 52, device=device).repeat_interleave(2, 2)  # blocky, so maps keep classes
    h, w = features.shape[-2:]
    sel = confidence_select(logits, 0.6, out_sizes=((h, w), disc.output_size(h, w)))
    upstream = torch.randn(2, 1, *disc.output_size(h, w), device=device)
    results = []
    for maps in (None, sel.downsampled):
        disc.zero_grad(set_to_none=True)
        x = features.clone().requires_grad_(True)
        out = disc(x, sel.labels, label_maps=maps)
        (out.logits * upstream).sum().backward()
        results.append((out, [x.grad] + [p.grad for p in disc.parameters()]))
    (plain, plain_grads), (given, given_grads) = results
    assert torch.equal(given.labels, plain.labels) and torch.equal(given.logits, plain.logits)
    assert all(torch.equal(a, b) for a, b in zip(given_grads, plain_grads))
    assert (plain.labels != IGNORE).any() and (plain.logits != 0).any()


def test_label_maps_errors():
    disc = SeparatedDiscriminator(3, N, CHANNELS)
    features, labels = torch.randn(GOOD_F), torch.zeros(GOOD_L, dtype=torch.long)
    lf, lo = torch.zeros(2, 4, 6, dtype=torch.long), torch.zeros(2, *disc.output_size(4, 6), dtype=torch.long)
    with pytest.raises(TypeError, match="label_maps must be a pair"):
        disc(features, labels, label_maps=lf)
    with pytest.raises(ValueError, match=r"label_maps\[0\] \(feature resolution\) must have shape \(2, 4, 6\)"):
        disc(features, labels, label_maps=(lf[:, :3], lo))
    with pytest.raises(ValueError, match=r"label_maps\[1\] \(output resolution\) must have shape"):
        disc(features, labels, label_maps=(lf, lf))
    with pytest.raises(TypeError, match=r"label_maps\[1\] \(output resolution\) must be int64"):
        disc(features, labels, label_maps=(lf, lo.int()))
    with pytest.raises(ValueError, match=r"label_maps\[0\] \(feature resolution\) must lie in \[0, 3\)"):
        disc(features, labels, label_maps=(lf + 3, lo))


def _under_cpu_autocast(disc, features, labels):
    """The logits of the reference and the fused backend, each run under CPU bfloat16 autocast."""
    outputs = {}
    for backend in ("reference", "fused"):
        disc.backend = backend
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[backend] = disc(features, labels).logits
    return outputs


def test_fused_under_cpu_autocast_matches_reference_in_bfloat16():
    torch.manual_seed(4)
    disc = SeparatedDiscriminator(5, N, CHANNELS)
    features = torch.randn(2, N, 8, 12)
    labels = label_layout("random", 2, 16, 24, 5, seed=3)
    outputs = _under_cpu_autocast(disc, features, labels)
    assert outputs["fused"].dtype == outputs["reference"].dtype == torch.bfloat16
    exact = SeparatedDiscriminator(5, N, CHANNELS, backend="reference")
    exact.load_state_dict(disc.state_dict())
    truth = exact(features, labels).logits.detach()
    # bfloat16 rounding: both backends within a few bf16 ulps of the float32 result, and close to each other.
    scale = float(truth.abs().max())
    for backend, out in outputs.items():
        torch.testing.assert_close(out.float(), truth, rtol=0.05, atol=0.05 * scale, msg=backend)


def test_fused_under_cpu_autocast_keeps_float64_like_the_reference():
    # Autocast leaves float64 tensors alone; the fused backend's layer 1 must not round them to bfloat16.
    torch.manual_seed(5)
    disc = SeparatedDiscriminator(3, N, CHANNELS).double()
    features = torch.randn(1, N, 8, 12, dtype=torch.float64)
    labels = label_layout("random", 1, 16, 24, 3, seed=2)
    outputs = _under_cpu_autocast(disc, features, labels)
    assert outputs["fused"].dtype == outputs["reference"].dtype == torch.float64
    assert_close_scaled(outputs["fused"], outputs["reference"], "logits")


@pytest.mark.parametrize("backend", ["reference", "grouped", "fused"])
def test_plan_reuse_equals_labels_and_rejects_other_features(backend):
    torch.manual_seed(0)
    disc = SeparatedDiscriminator(3, N, CHANNELS, backend=backend)
    labels = torch.randint(0, 3, (2, 16, 24))
    features = torch.randn(2, N, 8, 12)
    plan = disc.plan(labels, features.shape[-2:])
    assert (plan.rulebook is not None) == (backend == "fused")
    direct = disc(features, labels)
    for _ in range(2):  # reused
        out = disc(features, plan=plan)
        assert torch.equal(out.labels, direct.labels)
        torch.testing.assert_close(out.logits, direct.logits)
    with pytest.raises(ValueError, match=r"plan was built for a batch of 2 feature maps of size \(8, 12\)"):
        disc(torch.randn(2, N, 4, 6), plan=plan)
    with pytest.raises(ValueError, match="batch of 2"):
        disc(torch.randn(1, N, 8, 12), plan=plan)
    with pytest.raises(ValueError, match="not both"):
        disc(features, labels, plan=plan)
    with pytest.raises(TypeError, match="labels .* or a plan"):
        disc(features)
    other = SeparatedDiscriminator(4, N, CHANNELS, backend=backend)
    with pytest.raises(ValueError, match="3 classes"):
        other(features, plan=plan)


@pytest.mark.parametrize("backend", ["reference", "grouped", "fused"])
def test_concatenated_plans_evaluate_both_batches_at_once(backend):
    torch.manual_seed(0)
    C = 5
    disc = SeparatedDiscriminator(C, N, CHANNELS, (1, 2, 1, 2, 1), backend=backend)
    fa, fb = torch.randn(1, N, 7, 9), torch.randn(2, N, 7, 9)
    pa = disc.plan(label_layout("street", 1, 28, 36, C, seed=1), (7, 9))
    pb = disc.plan(label_layout("random", 2, 28, 36, C, seed=2), (7, 9))
    joint = disc(torch.cat([fa, fb]), plan=disc.concat_plans(pa, pb))
    apart = [disc(fa, plan=pa), disc(fb, plan=pb)]
    torch.testing.assert_close(joint.logits, torch.cat([o.logits for o in apart]), rtol=1e-5, atol=1e-6)
    assert torch.equal(joint.labels, torch.cat([o.labels for o in apart]))
    with pytest.raises(ValueError, match="cannot be joined: one size, one device"):
        disc.concat_plans(pa, disc.plan(label_layout("random", 1, 28, 36, C, seed=3), (6, 9)))
    with pytest.raises(TypeError, match="plan must come from SeparatedDiscriminator.plan"):
        disc.concat_plans(pa, (pa.lf, pa.lo))


@pytest.mark.parametrize("target_size", [(7, 9), (5, 6)], ids=["one size", "two sizes"])
@pytest.mark.parametrize("backend", ["reference", "grouped", "fused"])
def test_forward_domains_matches_two_forwards(backend, target_size, monkeypatch):
    import ssfdan_ext.nn.separated_discriminator as module

    torch.manual_seed(0)
    C = 5
    disc = SeparatedDiscriminator(C, N, CHANNELS, (1, 2, 1, 2, 1), backend=backend)
    ht, wt = target_size
    fs = torch.randn(2, N, 7, 9, requires_grad=True)
    ft = torch.randn(2, N, ht, wt, requires_grad=True)
    ls, lt = label_layout("street", 2, 28, 36, C, seed=1), label_layout("random", 2, 4 * ht, 4 * wt, C, seed=2)
    tau = torch.rand(2, C) + 0.5

    def loss_and_grads(outputs):
        disc.zero_grad(set_to_none=True)
        fs.grad = ft.grad = None
        loss = discriminator_loss(*outputs, tau)
        loss.backward()
        grads = [p.grad for p in disc.parameters()] + [fs.grad, ft.grad]
        return [o.logits.detach() for o in outputs], [o.labels for o in outputs], grads

    fused_evaluations = []
    evaluate = module.sparse_ssd_forward
    monkeypatch.setattr(module, "sparse_ssd_forward", lambda *a, **k: fused_evaluations.append(1) or evaluate(*a, **k))
    apart = loss_and_grads((disc(fs, ls), disc(ft, lt)))
    fused_evaluations.clear()
    for labels_t in (lt, disc.plan(lt, (ht, wt))):  # a label map or a plan
        both = loss_and_grads(disc.forward_domains(fs, ls, ft, labels_t))
        for got, want in zip(both[0] + both[2], apart[0] + apart[2]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert all(torch.equal(got, want) for got, want in zip(both[1], apart[1]))
    # The fused backend evaluates both domains at once, whatever their sizes.
    assert len(fused_evaluations) == (2 if backend == "fused" else 0)
    with pytest.raises(TypeError, match="target_labels must be a label map"):
        disc.forward_domains(fs, ls, ft, lt.numpy())
    with pytest.raises(ValueError, match="plan was built for a batch of 1"):
        disc.forward_domains(fs, ls, ft, disc.plan(lt[:1], (ht, wt)))


ORIENTATION_CHILD = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import torch
from conftest import compare_backends, label_layout
from ssfdan_ext import SeparatedDiscriminator, _C
print(_C.class_gemm_policy())
torch.manual_seed(0)
for B, C, strides in ((1, 3, (1, 2, 2, 2, 2)), (2, 19, (1, 1, 1, 1, 1))):
    disc = SeparatedDiscriminator(C, {N}, {CHANNELS}, strides)
    compare_backends(disc, torch.randn(B, {N}, 7, 9), label_layout("street", B, 15, 19, C, seed=C), "fused")
print("matched")
"""


@pytest.mark.parametrize("mode", ["direct", "transposed"])
def test_both_orientations_of_the_class_products_match_the_reference(mode):
    """SSFDAN_CLASS_GEMM puts every per-class product of the CPU kernels in one orientation (by default it depends
    on the shape and the CPU, csrc/aten/class_gemm.h, so one machine exercises only some): the fused backend's
    logits and every gradient equal the reference's in both."""
    proc = subprocess.run([sys.executable, "-c", ORIENTATION_CHILD], env=subprocess_env(SSFDAN_CLASS_GEMM=mode),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [mode, "matched"]


def test_an_unknown_orientation_setting_is_a_clear_error():
    code = ORIENTATION_CHILD.replace("print(_C.class_gemm_policy())", "")
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(SSFDAN_CLASS_GEMM="sideways"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "ValueError: SSFDAN_CLASS_GEMM must be auto, direct or transposed, got 'sideways'" in proc.stderr
