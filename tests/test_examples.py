"""The examples run: the AdaptSegNet-style porting example for a few iterations at a tiny size."""
from __future__ import annotations

import math

from conftest import load_script


def test_adaptsegnet_style_loop_runs(capsys):
    example = load_script("examples/adaptsegnet_style.py")
    history = example.main(["--iterations", "4", "--size", "32x64", "--device", "cpu", "--print-every", "1"])
    assert len(history) == 4 and all(math.isfinite(v) for row in history for v in row.values())
    assert history[0]["loss_adv"] == 0.0 and history[0]["kept"] == 0  # rho_schedule(0, N) = 0
    assert history[-1]["kept"] > 0 and history[-1]["loss_d"] > 0
    assert "iter     3" in capsys.readouterr().out
