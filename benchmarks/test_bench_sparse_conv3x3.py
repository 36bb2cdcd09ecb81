"""pytest-benchmark cases of bench_sparse_conv3x3.py (kept out of the default test run):

    pytest benchmarks --benchmark-only
"""
from __future__ import annotations

import pytest
from _harness import benchmark_case
from bench_sparse_conv3x3 import MODES, PRESETS, PROVIDERS, make_case, step


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_sparse_conv3x3(benchmark, provider, mode):
    benchmark_case(benchmark, lambda device: step(provider, mode, make_case(PRESETS["tiny"], device, mode != "fwd")))
