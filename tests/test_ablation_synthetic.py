"""benchmarks/ablation_synthetic.py runs every row of the ablation table and writes its Markdown table (tiny)."""
from __future__ import annotations

import importlib
import importlib.util
import sys
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


@pytest.mark.slow
def test_ablation_class_shift_tiny_in_two_workers(tmp_path, monkeypatch):
    # Imported by name (not from a file spec), so that the worker processes can unpickle its functions.
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    monkeypatch.delitem(sys.modules, "ablation_synthetic", raising=False)
    ablation = importlib.import_module("ablation_synthetic")
    out = tmp_path / "class_shift.md"
    assert ablation.main(["--preset", "class_shift", "--tiny", "--iterations", "2", "--seeds", "0", "1",
                          "--rows", "2", "7", "8", "9", "--workers", "2", "--out", str(out)]) == 0
    text = out.read_text()
    lines = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [line.split("|")[2].strip() for line in lines] == [ablation.CLASS_SHIFT_ROWS[r - 1][0] for r in (2, 7, 8, 9)]
    assert lines[0].rstrip().endswith("| – |")  # the global row itself
    paired = lines[1].split("|")[-2].strip()  # "+d ± s (d0, d1)": the mean of the per-seed differences
    mean, per_seed = float(paired.split(" ± ")[0]), [float(v) for v in paired.split("(")[1].rstrip(")").split(", ")]
    assert mean == pytest.approx(sum(per_seed) / 2, abs=0.006)
    assert len(out.with_suffix(".csv").read_text().splitlines()) == 1 + 4 * 2
    assert out.with_suffix(".png").exists() or importlib.util.find_spec("matplotlib") is None
