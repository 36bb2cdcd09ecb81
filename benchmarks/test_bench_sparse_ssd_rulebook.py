"""pytest-benchmark cases of bench_sparse_ssd_rulebook.py (kept out of the default test run):

    pytest benchmarks --benchmark-only
"""
from __future__ import annotations

import pytest
from _harness import benchmark_case
from bench_sparse_ssd_rulebook import LAYOUTS, PRESETS, PROVIDERS, label_maps, runner


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_sparse_ssd_rulebook(benchmark, provider, layout):
    benchmark_case(benchmark, lambda device: runner(provider, PRESETS["tiny"], *label_maps(PRESETS["tiny"], layout,
                                                                                          device)))
