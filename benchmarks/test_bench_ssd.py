"""pytest-benchmark cases of bench_ssd.py (kept out of the default test run):

    pytest benchmarks --benchmark-only
"""
from __future__ import annotations

import pytest
import torch
from _loop import LoopDiscriminator
from bench_ssd import MODES, PRESETS, PROVIDERS, make_case, step


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("preset", ["tiny", "cpu"])
def test_ssd(benchmark, preset, provider, mode):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    disc, features, labels = make_case(PRESETS[preset], "street", device)
    if provider == "loop":
        disc = LoopDiscriminator(disc)
    else:
        disc.backend = provider
    fn, setup = step(disc, features, labels, mode)

    def run(arg=None):
        fn(arg) if setup is not None else fn()
        if device.type == "cuda":
            torch.cuda.synchronize()

    if setup is None:
        benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    else:
        benchmark.pedantic(run, setup=lambda: ((setup(),), {}), rounds=5, warmup_rounds=1)
