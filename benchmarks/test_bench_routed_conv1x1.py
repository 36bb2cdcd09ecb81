"""pytest-benchmark cases of bench_routed_conv1x1.py (kept out of the default test run):

    pytest benchmarks --benchmark-only
"""
from __future__ import annotations

import pytest
from _harness import benchmark_case, timed_step
from bench_routed_conv1x1 import MODES, PRESETS, PROVIDERS, make_case, runner


def tiny_step(provider: str, mode: str, device):
    features, lf, weight, bias = make_case(PRESETS["tiny"], device, grad=mode != "fwd")
    return timed_step(runner(provider, PRESETS["tiny"], features, lf, weight, bias), [features, weight, bias], mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_routed_conv1x1(benchmark, provider, mode):
    benchmark_case(benchmark, lambda device: tiny_step(provider, mode, device))
