"""pytest-benchmark cases of bench_mode_downsample.py (kept out of the default test run):

    pytest benchmarks --benchmark-only
"""
from __future__ import annotations

import pytest
from _harness import benchmark_case
from bench_mode_downsample import PRESETS, PROVIDERS, make_labels, runner

TINY = PRESETS["tiny"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_mode_downsample(benchmark, provider):
    benchmark_case(benchmark, lambda device: runner(provider, TINY, make_labels(TINY, device), TINY.out_sizes[0]))
