"""The README's code runs as written, and its commands are the ones CI runs (the docs/ pages: test_docs.py)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import ssfdan_ext as sd

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _block(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)```", README, re.S)
    assert match, f"README has no code block after <!-- {marker} -->"
    return match.group(1)


class TinySegmenter(nn.Module):
    """Returns (logits, features) at 1/8 of the input, like DeepLab-v2."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, channels, 8, stride=8)
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        features = torch.relu(self.body(x))
        return self.head(features), features


def test_discriminator_setup_block():
    scope = {"torch": torch}
    exec(_block("discriminator-setup"), scope)
    disc = scope["disc"]
    assert isinstance(disc, sd.SeparatedDiscriminator) and disc.num_classes == 19 and disc.in_channels == 2048
    assert isinstance(scope["opt_d"], torch.optim.Adam)


def test_training_step_block_trains_both_networks():
    torch.manual_seed(0)
    C, n = 19, 16
    model = TinySegmenter(C, n)
    disc = sd.SeparatedDiscriminator(C, in_channels=n, channels=(8, 8, 8, 8))
    images = [torch.randn(1, 3, 64, 64) for _ in range(3)]
    source_loader = [(img, torch.randint(0, C, (1, 64, 64))) for img in images]
    target_loader = [(img + 1.0, torch.zeros(1, 64, 64, dtype=torch.long)) for img in images]
    scope = {
        "sd": sd, "F": F, "torch": torch, "model": model, "disc": disc, "total_iters": 3,
        "opt_g": torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True),
        "opt_d": torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.9, 0.99)),
        "source_loader": source_loader, "target_loader": target_loader,
    }
    g_before = [p.detach().clone() for p in model.parameters()]
    d_before = [p.detach().clone() for p in disc.parameters()]
    exec(_block("training-step"), scope)
    assert all(not torch.equal(a, b) for a, b in zip(g_before, model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, disc.parameters()))
    assert torch.isfinite(scope["loss_adv"])
    assert all(torch.isfinite(out.logits).all() for out in (scope["out_s"], scope["out_t"]))


def test_training_step_fits_in_twenty_lines():
    assert len(_block("training-step").strip().splitlines()) <= 20


def test_ci_runs_the_readme_test_command():
    ci = Path(__file__).resolve().parent.parent / ".ci" / "run"
    printed = subprocess.run(["bash", str(ci), "--print-command"], capture_output=True, text=True, check=True)
    command = _block("test-command").strip()
    assert printed.stdout.strip() == command
    assert command.count("\n") == 0 and "pytest" in command and "--no-build-isolation" in command


def test_main_command_is_the_synthetic_training_run():
    root = Path(__file__).resolve().parent.parent
    command = _block("main-command").strip()
    assert command.count("\n") == 0 and "--no-build-isolation" in command
    assert command.endswith("&& ssfdan-train --config configs/synthetic.yaml")
    # The embedded default and the documented file are the same config.
    assert (root / "configs" / "synthetic.yaml").read_text() == (
        root / "ssfdan_ext" / "train" / "configs" / "synthetic.yaml").read_text()

