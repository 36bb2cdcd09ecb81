"""The checks of ``python -m ssfdan_ext.info --check``: every compiled op and Triton kernel against the reference.

Each check runs one op on one device in one dtype, on two kinds of tiny inputs (random values with blocky labels,
and tie-heavy ones: integer-valued logits, integer-valued operands of the linear layers, labels whose
mode-downsampling bins tie and classes without a cell), and compares the forward result and every gradient with
the plain-PyTorch definition computed on the CPU.
A float field's error is ``max|actual - expected| / max(max|expected|, 1)`` (docs/semantics.md section 3's scaling);
integer fields must match exactly. bfloat16 runs compare with the float32 definition evaluated on the same
bfloat16-rounded inputs, so their tolerance covers the rounding of intermediate results to bfloat16 only.
"""
from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops, reference
from ._ext import has_cuda_kernels, require_compiled
from .geometry import KERNELS, output_size
from .nn import SeparatedDiscriminator
from .types import IGNORE

# float32: docs/semantics.md section 3 (rtol 1e-4 after scaling). bfloat16 (8 significant bits, 2**-8 = 3.9e-3 relative)
# for one linear layer: outputs rounded to bfloat16, measured at up to 4e-3 here; a wrong tap or class errs by O(1). The
# whole SS-D in bfloat16 has a budget relative to the reference's own bfloat16 error instead.
TOLERANCES = {torch.float32: 1e-4, torch.bfloat16: 5e-2}
KINDS = ("random", "ties")
C, N, CHANNELS, STRIDES = 3, 4, (6, 5, 4, 3), (1, 2, 1, 2, 1)


@dataclass
class Row:
    """One line of the check table. ``status`` is PASS, FAIL or SKIP; ``detail`` names the worst field, the
    exception of a FAIL that raised, or why a row was skipped."""

    op: str
    device: str
    dtype: str
    status: str
    error: float | None = None
    tol: float | None = None
    detail: str = ""


class Comparison:
    """The (field, error, tolerance) triples of one check; the row passes when every error is within its own."""

    def __init__(self) -> None:
        self.fields: list[tuple[str, float, float]] = []

    def close(self, name: str, actual: Tensor, expected: Tensor, tol: float, relative: bool = False) -> None:
        actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
        if actual.shape != expected.shape:
            self.fields.append((f"{name} shape {tuple(actual.shape)} != {tuple(expected.shape)}", float("inf"), tol))
            return
        if not expected.numel():
            err = 0.0
        elif relative:  # per element, relative to the expected value (docs/semantics.md 1.4: within 1e-5 relative)
            err = float(((actual - expected).abs() / expected.abs().clamp(min=1e-30)).max())
        else:
            err = float((actual - expected).abs().max() / max(float(expected.abs().max()), 1.0))
        self.fields.append((name, err if err == err else float("inf"), tol))  # NaN counts as the worst error

    def exact(self, name: str, actual: Tensor, expected: Tensor) -> None:
        """Integer results: the error is the fraction of elements that differ, the tolerance 0."""
        actual, expected = actual.detach().cpu(), expected.detach().cpu()
        if actual.shape != expected.shape:
            self.fields.append((f"{name} shape {tuple(actual.shape)} != {tuple(expected.shape)}", 1.0, 0.0))
            return
        err = float((actual != expected).float().mean()) if expected.numel() else 0.0
        self.fields.append((name, err, 0.0))

    def worst(self) -> tuple[str, float, float]:
        def ratio(field: tuple[str, float, float]) -> float:
            _, err, tol = field
            return err / tol if tol > 0 else (float("inf") if err > 0 else 0.0)

        return max(self.fields, key=ratio)

    def passed(self) -> bool:
        return all(err <= tol for _, err, tol in self.fields)


# --- inputs ------------------------------------------------------------------------------------------------

def _labels(kind: str, B: int, H: int, W: int, gen: torch.Generator, k: int = 1) -> Tensor:
    """Blocky random labels with IGNORE pixels, or tie-heavy ones for mode downsampling by ``k`` x ``k`` bins:
    70% of the bins split half and half between two classes (a tie, which the lower class must win), the others
    one class; in the last image a quarter is IGNORE (bins without a labelled pixel)."""
    if kind == "random":
        blocks = torch.randint(0, C, (B, (H + 2) // 3, (W + 2) // 3), generator=gen)
        labels = blocks.repeat_interleave(3, 1).repeat_interleave(3, 2)[:, :H, :W].contiguous()
        labels[torch.rand(B, H, W, generator=gen) < 0.1] = IGNORE
        return labels
    h, w = -(-H // k), -(-W // k)
    first = torch.randint(0, C, (B, h, w), generator=gen)
    second = (first + torch.randint(1, C, (B, h, w), generator=gen)) % C
    second = torch.where(torch.rand(B, h, w, generator=gen) < 0.7, second, first)
    pixels = [t.repeat_interleave(k, 1).repeat_interleave(k, 2)[:, :H, :W] for t in (first, second)]
    labels = torch.where(torch.arange(W) % k < k // 2, pixels[0], pixels[1])
    labels[-1, : H // 2, : W // 2] = IGNORE
    return labels


def _values(kind: str, shape: tuple[int, ...], gen: torch.Generator, scale: float = 1.0) -> Tensor:
    if kind == "ties":  # few distinct values: equal products and exact zeros (for the linear ops only)
        return torch.randint(-2, 3, shape, generator=gen).double() * scale
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def _rounded(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` rounded to ``dtype`` and back to float32: the inputs both sides see."""
    return t.to(dtype).float()


def _grads(out: Tensor, leaves: list[Tensor], upstream: Tensor) -> list[Tensor]:
    """Gradients of ``sum(out * upstream)``; a leaf the output does not depend on gets zeros."""
    grads = torch.autograd.grad((out * upstream.to(out)).sum(), leaves, allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]


def _leaves(tensors, dtype: torch.dtype, device: str | torch.device) -> list[Tensor]:
    return [t.to(device=device, dtype=dtype).requires_grad_(True) for t in tensors]


# --- one check per op ------------------------------------------------------------------------------------------

def check_confidence_select(device: str, dtype: torch.dtype, impl: str | None, gen: torch.Generator) -> Comparison:
    # Without its kernel the op runs the reference itself: a comparison would pass without checking anything.
    require_compiled("confidence_select")
    if device == "cuda" and not has_cuda_kernels():
        raise RuntimeError("ssfdan_ext was built without its CUDA kernels: confidence_select falls back to the "
                           "reference on CUDA tensors")
    cmp = Comparison()
    for kind in KINDS:
        logits = (_values("random", (2, 5, 9, 13), gen, 3.0) if kind == "random" else
                  torch.randint(0, 3, (2, 5, 9, 13), generator=gen).double()).to(dtype)
        for rho in (0.3, 0.8, 1.0):
            sizes = ((3, 4), (2, 2))
            expected = reference.confidence_select(logits.float(), rho, out_sizes=sizes)
            actual = ops.confidence_select(logits.to(device), rho, out_sizes=sizes)
            for name in ("labels", "confidence", "counts"):
                cmp.exact(f"{kind} rho={rho} {name}", getattr(actual, name), getattr(expected, name))
            for name in ("conf_sums", "tau"):
                cmp.close(f"{kind} rho={rho} {name}", getattr(actual, name), getattr(expected, name), 1e-5, True)
            for i, (a, e) in enumerate(zip(actual.downsampled, expected.downsampled)):
                cmp.exact(f"{kind} rho={rho} downsampled[{i}]", a, e)
    return cmp


def check_mode_downsample(device: str, dtype: torch.dtype, impl: str | None, gen: torch.Generator) -> Comparison:
    cmp = Comparison()
    for kind in KINDS:
        labels = _labels(kind, 2, 12, 18, gen, k=2)
        for size in ((6, 9), (5, 7), (12, 18), (1, 1)):
            expected = reference.mode_downsample(labels, size, C)
            cmp.exact(f"{kind} {size}", ops.mode_downsample(labels.to(device), size, C), expected)
    return cmp


def _separated_conv1x1(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """docs/semantics.md section 3, steps 2-3 for layer 1, literally: the separated input through the grouped 1x1
    conv."""
    B, n, h, w = features.shape
    masks = (labels.unsqueeze(1) == torch.arange(C).view(1, C, 1, 1)).to(features.dtype)
    return F.conv2d((masks.unsqueeze(2) * features.unsqueeze(1)).reshape(B, C * n, h, w), weight, bias, groups=C)


def check_routed_conv1x1(device: str, dtype: torch.dtype, impl: str | None, gen: torch.Generator) -> Comparison:
    cmp = Comparison()
    tol = TOLERANCES[dtype]
    for kind in KINDS:
        n, m = 6, 4
        labels = _labels(kind, 2, 5, 7, gen)
        inputs = [_values(kind, (2, n, 5, 7), gen), _values(kind, (C * m, n, 1, 1), gen, n ** -0.5),
                  _values(kind, (C * m,), gen)]
        upstream = _values("random", (2, C * m, 5, 7), gen)
        leaves = _leaves(inputs, dtype, device)
        out = ops.routed_layer1_dense(leaves[0], labels.to(device), *leaves[1:], C, impl=impl)
        ref_leaves = _leaves([_rounded(t, dtype) for t in inputs], torch.float32, "cpu")
        ref = _separated_conv1x1(ref_leaves[0], labels, *ref_leaves[1:])
        cmp.close(f"{kind} forward", out, ref, tol)
        for name, g, g_ref in zip(("features", "weight", "bias"), _grads(out, leaves, upstream),
                                  _grads(ref, ref_leaves, upstream)):
            cmp.close(f"{kind} grad {name}", g, g_ref, tol)
    return cmp


def check_sparse_conv3x3(device: str, dtype: torch.dtype, impl: str | None, gen: torch.Generator) -> Comparison:
    cmp = Comparison()
    tol = TOLERANCES[dtype]
    for kind in KINDS:
        labels = _labels(kind, 2, 28, 36, gen, k=4)
        lf, lo = _label_maps(labels, 7, 9)
        rb = ops.sparse_ssd_rulebook(lf, lo, C, STRIDES[1:])
        taps, offsets = rb.taps[0], rb.offsets[0]  # layer 2: stride 2 over the 7x9 layer-1 grid
        mi, mo = 5, 4
        inputs = [_values(kind, (lf.numel() + C + 1, mi), gen), _values(kind, (C * mo, mi, 3, 3), gen, 1 / 6),
                  _values(kind, (C * mo,), gen)]
        upstream = _values("random", (taps.shape[0], mo), gen)
        leaves = _leaves(inputs, dtype, device)
        out = ops.sparse_conv3x3(leaves[0], taps.to(device), offsets.to(device), *leaves[1:], impl=impl)
        ref_leaves = _leaves([_rounded(t, dtype) for t in inputs], torch.float32, "cpu")
        ref = reference.sparse_conv3x3(ref_leaves[0], taps, offsets, *ref_leaves[1:])
        cmp.close(f"{kind} forward", out, ref, tol)
        grads, ref_grads = _grads(out, leaves, upstream), _grads(ref, ref_leaves, upstream)
        # The table's last row is the SS-D's zero row: its gradient is 0 by contract (ops.sparse_conv3x3).
        ref_grads[0] = torch.cat([ref_grads[0][:-1], torch.zeros_like(ref_grads[0][-1:])])
        for name, g, g_ref in zip(("table", "weight", "bias"), grads, ref_grads):
            cmp.close(f"{kind} grad {name}", g, g_ref, tol)
    return cmp


def _label_maps(labels: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
    return (reference.mode_downsample(labels, (h, w), C),
            reference.mode_downsample(labels, output_size(h, w, STRIDES), C))


def _ssd_parameters(gen: torch.Generator) -> tuple[list[Tensor], list[Tensor]]:
    # Random values even for tie-heavy labels: a pre-activation exactly at the LeakyReLU kink has no derivative,
    # and backends that round it to +-0 differently would legitimately disagree about its gradient.
    chans = (N, *CHANNELS, 1)
    weights = [_values("random", (C * o, i, k, k), gen, 1 / (k * i ** 0.5))
               for i, o, k in zip(chans[:-1], chans[1:], KERNELS)]
    return weights, [_values("random", (C * o,), gen, 0.5) for o in chans[1:]]


def check_sparse_ssd_rulebook(device: str, dtype: torch.dtype, impl: str | None,
                              gen: torch.Generator) -> Comparison:
    """The rulebook equals the reference's set-by-set construction, and the sparse evaluation that reads it equals
    the reference SS-D in float64 (logits and every gradient)."""
    cmp = Comparison()
    from .ops.sparse_ssd import sparse_ssd_forward

    for kind in KINDS:
        labels = _labels(kind, 2, 28, 36, gen, k=4)
        lf, lo = _label_maps(labels, 7, 9)
        rb = ops.sparse_ssd_rulebook(lf.to(device), lo.to(device), C, STRIDES[1:])
        # The set-by-set construction of the reference, exactly (on a GPU this also checks the CUDA rulebook).
        lf_masked, taps, offsets, out_index = reference.sparse_ssd_rulebook(lf, lo, C, STRIDES[1:])
        cmp.exact(f"{kind} lf_masked", rb.lf_masked, lf_masked)
        cmp.exact(f"{kind} out_index", rb.out_index, out_index)
        for layer in range(4):
            cmp.exact(f"{kind} taps[{layer}]", rb.taps[layer], taps[layer])
            cmp.exact(f"{kind} offsets[{layer}]", rb.offsets[layer], offsets[layer])
        weights, biases = _ssd_parameters(gen)
        inputs = [_values("random", (2, N, 7, 9), gen), *weights, *biases]
        upstream = _values("random", (2, 1, *lo.shape[1:]), gen)
        leaves = _leaves(inputs, torch.float64, device)
        out = sparse_ssd_forward(leaves[0], lf.to(device), lo.to(device), leaves[1:6], leaves[6:], STRIDES, C,
                                 impl="aten", rulebook=rb)
        ref_leaves = _leaves(inputs, torch.float64, "cpu")
        ref = reference.ssd_forward(ref_leaves[0], labels, ref_leaves[1:6], ref_leaves[6:], STRIDES, C,
                                    label_maps=(lf, lo)).logits
        cmp.close(f"{kind} sparse logits (float64)", out, ref, 1e-10)
        for i, (g, g_ref) in enumerate(zip(_grads(out, leaves, upstream), _grads(ref, ref_leaves, upstream))):
            cmp.close(f"{kind} sparse grad of input {i} (float64)", g, g_ref, 1e-10)
    return cmp


def _discriminator(backend: str, dtype: torch.dtype, device: str, weights: list[Tensor],
                   biases: list[Tensor]) -> SeparatedDiscriminator:
    disc = SeparatedDiscriminator(C, N, CHANNELS, STRIDES, backend=backend)
    with torch.no_grad():
        for conv, w, b in zip(disc.convs, weights, biases):
            conv.weight.copy_(w)
            conv.bias.copy_(b)
    return disc.to(device=device, dtype=dtype)


def _ssd_run(backend: str, dtype: torch.dtype, device: str, weights: list[Tensor], biases: list[Tensor],
             features: Tensor, labels: Tensor, upstream: Tensor) -> tuple[Tensor, list[Tensor]]:
    """(output labels, [logits, grad features, grads of the parameters]) of one SS-D backend in ``dtype``."""
    disc = _discriminator(backend, dtype, device, weights, biases)
    x = features.to(device=device, dtype=dtype).requires_grad_(True)
    out = disc(x, labels.to(device))
    # parameters() interleaves weight and bias; report weights first: convs.0.weight ... convs.4.bias
    params = [disc.convs[l].weight for l in range(5)] + [disc.convs[l].bias for l in range(5)]
    return out.labels, [out.logits, *_grads(out.logits, [x, *params], upstream)]


def check_separated_discriminator(device: str, dtype: torch.dtype, backend: str | None,
                                  gen: torch.Generator) -> Comparison:
    """float32: the backend against the reference within docs/semantics.md section 3's tolerance. bfloat16: against the
    float64 reference, at most twice as far as the reference itself run in bfloat16 (+1e-2), as tests/test_sparse_ssd.py
    asks: intermediates rounded near the LeakyReLU kink move some gradients by 10% on some seeds."""
    cmp = Comparison()
    names = ["logits", "grad features"] + [f"grad convs.{l}.{p}" for p in ("weight", "bias") for l in range(5)]
    for kind in KINDS:
        labels = _labels(kind, 2, 28, 36, gen, k=4)
        weights, biases = _ssd_parameters(gen)
        inputs = [_rounded(t, dtype) for t in (_values("random", (2, N, 7, 9), gen), *weights, *biases)]
        upstream = _values("random", (2, 1, *output_size(7, 9, STRIDES)), gen)
        args = (inputs[1:6], inputs[6:], inputs[0], labels, upstream)
        out_labels, results = _ssd_run(backend, dtype, device, *args)
        ref_labels, truth = _ssd_run("reference", torch.float32 if dtype == torch.float32 else torch.float64,
                                     "cpu", *args)
        cmp.exact(f"{kind} labels", out_labels, ref_labels)
        if dtype == torch.float32:
            for name, a, e in zip(names, results, truth):
                cmp.close(f"{kind} {name}", a, e, TOLERANCES[dtype])
            continue
        _, own = _ssd_run("reference", dtype, "cpu", *args)
        for name, a, r, e in zip(names, results, own, truth):
            budget = Comparison()
            budget.close(name, r, e, 0.0)
            cmp.close(f"{kind} {name}", a, e, 2 * budget.fields[0][1] + 1e-2)
    return cmp


def check_forward_domains(device: str, dtype: torch.dtype, backend: str | None, gen: torch.Generator) -> Comparison:
    """A discriminator step's two domains, of two feature sizes, in one forward (SeparatedDiscriminator.
    forward_domains: one row of cells on the joined rulebook) against the reference's two forwards."""
    cmp = Comparison()
    sizes = (((7, 9), (28, 36)), ((5, 6), (20, 24)))
    names = [f"{d} {what}" for d in ("source", "target") for what in ("logits", "grad features")]
    names += [f"grad convs.{l}.{p}" for p in ("weight", "bias") for l in range(5)]
    for kind in KINDS:
        weights, biases = _ssd_parameters(gen)
        feats = [_values("random", (2, N, *f), gen).float() for f, _ in sizes]
        labels = [_labels(kind, 2, *lab, gen, k=4) for _, lab in sizes]
        upstream = [_values("random", (2, 1, *output_size(*f, STRIDES)), gen).float() for f, _ in sizes]
        results = []
        for run_backend, run_device in ((backend, device), ("reference", "cpu")):
            disc = _discriminator(run_backend, dtype, run_device, weights, biases)
            x = [f.to(device=run_device, dtype=dtype).requires_grad_(True) for f in feats]
            lab = [t.to(run_device) for t in labels]
            if run_backend == "reference":
                outs = [disc(x[0], lab[0]), disc(x[1], lab[1])]
            else:
                outs = list(disc.forward_domains(x[0], lab[0], x[1], lab[1]))
            params = [disc.convs[l].weight for l in range(5)] + [disc.convs[l].bias for l in range(5)]
            loss = sum((o.logits * u.to(o.logits)).sum() for o, u in zip(outs, upstream))
            grads = torch.autograd.grad(loss, [*x, *params])
            results.append([outs[0].logits, grads[0], outs[1].logits, grads[1], *grads[2:]])
            cmp.exact(f"{kind} {run_backend} output sizes",
                      torch.tensor([list(o.logits.shape) for o in outs]),
                      torch.tensor([[2, 1, *output_size(*f, STRIDES)] for f, _ in sizes]))
        for name, a, e in zip(names, *results):
            cmp.close(f"{kind} {name}", a, e, TOLERANCES[dtype])
    return cmp


# --- the table of checks ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    op: str
    impl: str | None
    dtypes: tuple[torch.dtype, ...]
    run: Callable[[str, torch.dtype, str | None, torch.Generator], Comparison]

    @property
    def name(self) -> str:
        return self.op if self.impl is None else f"{self.op}[{self.impl}]"


FLOATS = (torch.float32, torch.bfloat16)
CHECKS = (
    Check("confidence_select", None, FLOATS, check_confidence_select),
    Check("mode_downsample", None, (torch.int64,), check_mode_downsample),
    Check("routed_conv1x1", "aten", FLOATS, check_routed_conv1x1),
    Check("routed_conv1x1", "triton", FLOATS, check_routed_conv1x1),
    Check("sparse_conv3x3", "aten", FLOATS, check_sparse_conv3x3),
    Check("sparse_conv3x3", "triton", FLOATS, check_sparse_conv3x3),
    Check("sparse_ssd_rulebook", None, (torch.int64,), check_sparse_ssd_rulebook),
    Check("SeparatedDiscriminator", "grouped", FLOATS, check_separated_discriminator),
    Check("SeparatedDiscriminator", "fused", FLOATS, check_separated_discriminator),
    Check("forward_domains", "fused", (torch.float32,), check_forward_domains),
)


@functools.cache
def triton_error() -> str | None:
    """Why Triton does not import, or None when it does."""
    try:
        importlib.import_module("triton")
    except Exception as exc:  # ImportError, or a broken installation raising something else
        return f"{type(exc).__name__}: {exc}"
    return None


def triton_interpreted() -> bool:
    """Whether Triton kernels run in Triton's interpreter (on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def skip_reason(check: Check, device: str, dtype: torch.dtype) -> str | None:
    """Why a check cannot run here (a SKIP, not a FAIL), or None."""
    uses_triton = check.impl == "triton" or (check.impl == "fused" and device == "cuda")
    if check.impl == "triton" and triton_error():
        return f"Triton does not import ({triton_error()})"
    if uses_triton and device == "cuda" and triton_interpreted():
        return "TRITON_INTERPRET=1: Triton kernels run interpreted, on CPU tensors only"
    if check.impl == "triton" and device == "cpu":
        if not triton_interpreted():
            return "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
        if dtype == torch.bfloat16:
            return "the Triton interpreter's tl.dot is wrong for bfloat16 operands (checked on the GPU)"
    return None


def run_checks(devices: list[str], seed: int = 0, only: list[str] | None = None,
               report: Callable[[Row], None] | None = None) -> list[Row]:
    """Every check on every device (``only``: op names or ``op[impl]`` names to run); never raises for an op."""
    rows = []
    for check in CHECKS:
        if only and check.op not in only and check.name not in only:
            continue
        for device in devices:
            for dtype in check.dtypes:
                dtype_name = str(dtype).removeprefix("torch.")
                reason = skip_reason(check, device, dtype)
                if reason is not None:
                    row = Row(check.name, device, dtype_name, "SKIP", detail=reason)
                else:
                    row = _run_one(check, device, dtype, dtype_name, seed)
                rows.append(row)
                if report is not None:
                    report(row)
    return rows


def _run_one(check: Check, device: str, dtype: torch.dtype, dtype_name: str, seed: int) -> Row:
    gen = torch.Generator().manual_seed(seed)
    try:
        cmp = check.run(device, dtype, check.impl, gen)
    except Exception as exc:  # an op that raises is a FAIL of its row; the other rows still run
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Row(check.name, device, dtype_name, "FAIL", detail=f"raised {type(exc).__name__}: {message}"[:160])
    field, err, tol = cmp.worst()
    status = "PASS" if cmp.passed() else "FAIL"
    return Row(check.name, device, dtype_name, status, err, tol, f"worst: {field}")
