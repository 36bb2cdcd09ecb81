"""pytest-benchmark cases of bench_confidence_select.py (kept out of the default test run):

    pytest benchmarks --benchmark-only
"""
from __future__ import annotations

import pytest
import torch
from bench_confidence_select import MODES, PRESETS, PROVIDERS, make_logits, runner


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("preset", ["tiny", "cpu"])
def test_confidence_select(benchmark, preset, provider, mode):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    logits = make_logits(PRESETS[preset], device)
    run = runner(provider, mode, PRESETS[preset], logits)

    def timed():
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=5, warmup_rounds=1)
