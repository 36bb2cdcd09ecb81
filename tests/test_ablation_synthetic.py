"""benchmarks/ablation_synthetic.py runs every row of the ablation table and writes its Markdown table (tiny)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "ablation_synthetic.py"


def _module():
    spec = importlib.util.spec_from_file_location("ablation_synthetic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ablation_table_tiny(tmp_path, capsys):
    ablation = _module()
    out = tmp_path / "ablation.md"
    assert ablation.main(["--tiny", "--iterations", "2", "--seeds", "0", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "Command: `python benchmarks/ablation_synthetic.py --tiny --iterations 2 --seeds 0 1" in text
    lines = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(lines) == len(ablation.ROWS) == 11
    for line, (label, _) in zip(lines, ablation.ROWS):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == label
        mean, std = (float(v) for v in cells[2].split(" ± "))
        per_seed = [float(v) for v in cells[4].split(", ")]
        assert len(per_seed) == 2 and mean == pytest.approx(sum(per_seed) / 2, abs=0.006) and std >= 0
    assert len(out.with_suffix(".csv").read_text().splitlines()) == 1 + 11 * 2
    with pytest.raises(SystemExit, match="row numbers"):
        ablation.main(["--tiny", "--rows", "12", "--out", str(out)])
