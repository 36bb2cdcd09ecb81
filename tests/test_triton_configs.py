"""The Triton kernels' shared launch path (ssfdan_ext.triton.configs): configurations, device checks and guards,
and the ahead-of-time compilation report that the per-op tests run (tests/triton_aot.py)."""
from __future__ import annotations


import pytest
import torch
from conftest import require_triton


@pytest.fixture(scope="module")
def configs():
    require_triton()
    from ssfdan_ext.triton import configs

    return configs


def test_kernel_configs_for_the_paper_widths(configs):
    KERNELS, describe_configs, kernel_config = configs.KERNELS, configs.describe_configs, configs.kernel_config
    table = describe_configs((2048, 1024, 512, 256, 128, 1), torch.float32)
    assert len(table) == 5 * 3 and {row["kernel"] for row in table} == set(KERNELS)
    assert all(row["input_precision"] == "ieee" for row in table)  # tests/conftest.py turns TF32 off
    last = [row for row in table if row["layer"] == 5]
    # m_out = 1: the narrowest tile tl.dot allows along the output channels, not 64 masked columns.
    assert {row["block_n"] for row in last if row["kernel"] != "sparse_grad_table"} == {16}
    for row in table:
        assert row["block_k"] >= 16 and row["num_warps"] in (4, 8) and row["num_stages"] >= 1
    assert kernel_config("sparse_fwd", 1024, 512, torch.float32, "tf32").block_k == 32
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernel_config("sparse_forward", 8, 8, torch.float32)
    with pytest.raises(ValueError, match="precision must be 'ieee' or 'tf32'"):
        kernel_config("sparse_fwd", 8, 8, torch.float32, "fp32")


def test_check_device(configs):
    # The interpreter computes on the host: CUDA tensors there would be copied around for hours. Compiled kernels
    # need CUDA tensors. torch.device("cuda", 1) needs no GPU to exist.
    with pytest.raises(ValueError, match=r"runs on CPU tensors, got tensors on cuda:1: unset TRITON_INTERPRET"):
        configs.check_device(torch.device("cuda", 1), interpreted=True)
    with pytest.raises(ValueError, match=r"compiled Triton kernels need CUDA tensors, got tensors on cpu"):
        configs.check_device(torch.device("cpu"), interpreted=False)
    configs.check_device(torch.device("cpu"), interpreted=True)
    configs.check_device(torch.device("cuda", 1), interpreted=False)


def test_launch_runs_on_the_tensors_device(configs, monkeypatch):
    # Triton launches on the current device: a launch for tensors on cuda:1 must make cuda:1 current around it,
    # and it goes through wrap_triton (so that tracing records it in the graph).
    events = []

    class Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            events.append(("enter", self.device))

        def __exit__(self, *exc):
            events.append(("exit", self.device))

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: events.append(("launch", grid))

    class FakeCudaTensor:  # all that launch reads of its ``like`` tensor
        device, is_cuda = torch.device("cuda", 1), True

    def wrap_triton(kernel):
        events.append(("wrap", type(kernel).__name__))
        return kernel

    monkeypatch.setattr(torch.cuda, "device", Guard)
    monkeypatch.setattr(torch.library, "wrap_triton", wrap_triton)
    monkeypatch.setattr(configs, "is_interpreted", lambda kernel: False)
    config = configs.kernel_config("routed_fwd", 8, 8, torch.float32)
    configs.launch(Kernel(), (2, 1), (), FakeCudaTensor(), config)
    assert events == [("enter", torch.device("cuda", 1)), ("wrap", "Kernel"), ("launch", (2, 1)),
                      ("exit", torch.device("cuda", 1))]
