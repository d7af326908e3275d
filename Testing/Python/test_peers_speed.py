"""``python -m benchmarks peers-speed``: whole processes timed in alternating order, ratios.

The peer here is a small Python command (the real peers live in their own venv, run by hand);
PocketSeg runs for real (``pocketseg predict`` with the shipped skull strip on a small head).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks import peers_speed
from benchmarks.__main__ import main as benchmarks_main
from pocketseg_core.errors import PocketSegError


def _python(code: str, *arguments: str) -> list[str]:
    return [sys.executable, "-c", code, *arguments]


def test_rounds_alternate_and_time_the_whole_process(tmp_path: Path) -> None:
    order = tmp_path / "order.txt"
    append = "import sys,time; open(sys.argv[1],'a').write(sys.argv[2]); time.sleep(float(sys.argv[3]))"
    spin = "import sys; open(sys.argv[1],'a').write(sys.argv[2]); sum(i*i for i in range(3_000_000))"
    commands = {
        "a": _python(append, str(order), "a", "0.3"),
        "b": _python(spin, str(order), "b"),
    }
    timings = peers_speed.time_alternating(commands, rounds=3, warmup=1)
    # warm-up a b, then b a, a b, b a: the order swaps every round
    assert order.read_text(encoding="utf-8") == "ab" + "ba" + "ab" + "ba"
    assert [len(timings["a"]), len(timings["b"])] == [3, 3]
    assert all(t.wall_s >= 0.3 for t in timings["a"])  # sleeping counts in the wall clock ...
    assert all(t.cpu_s < t.wall_s - 0.2 for t in timings["a"])  # ... not in the CPU time
    assert all(t.cpu_s > 0.05 and t.peak_rss_mb > 1 for t in timings["b"])  # the child's own usage


def test_a_failing_process_is_one_clear_error() -> None:
    with pytest.raises(PocketSegError, match=r"failed \(exit 3\).*broken peer"):
        peers_speed.time_process(_python("import sys; print('broken peer'); sys.exit(3)"))


def test_summary_is_the_ratio_of_medians_and_of_each_round() -> None:
    timing = peers_speed.ProcessTiming
    timings = {
        "pocketseg": [timing(2.0, 1.0, 500), timing(3.0, 1.2, 520), timing(10.0, 1.1, 510)],
        "deepbet": [timing(4.0, 4.0, 900), timing(6.0, 3.0, 950), timing(5.0, 5.0, 900)],
    }
    summary = peers_speed.summarise(timings, "pocketseg", "deepbet")
    assert summary["medians"]["pocketseg"] == {"wall_s": 3.0, "cpu_s": 1.1, "peak_rss_mb": 520}
    assert summary["ratio_wall"] == pytest.approx(3.0 / 5.0)
    assert summary["ratio_cpu"] == pytest.approx(1.1 / 4.0)
    assert summary["ratio_wall_per_round"] == [0.5, 0.5, 2.0]
    assert summary["ratio_cpu_per_round"] == [0.25, 0.4, 0.22]


def test_peer_command_from_a_template_or_the_peers_python(tmp_path: Path) -> None:
    head, mask = tmp_path / "head.nii.gz", tmp_path / "mask.nii.gz"
    command = peers_speed.peer_command("x", head, mask, None, "tool --in {input} --out={output}")
    assert command == ["tool", "--in", str(head), f"--out={mask}"]
    with pytest.raises(PocketSegError, match=r"\{input\} and \{output\}"):
        peers_speed.peer_command("x", head, mask, None, "tool {input}")
    with pytest.raises(PocketSegError, match="does not exist: create the peers' venv"):
        peers_speed.peer_command("deepbet", head, mask, str(tmp_path / "no-python"), None)
    with pytest.raises(PocketSegError, match="--peers-python"):
        peers_speed.peer_command("deepbet", head, mask, None, None)


def test_command_line_times_pocketseg_against_a_peer(tmp_path: Path, capsys) -> None:
    """End to end: the real ``pocketseg predict`` and a fake peer that copies a threshold mask."""
    rng = np.random.default_rng(0)
    values = rng.normal(100.0, 10.0, (40, 48, 48)).astype(np.float32)
    values[10:30, 12:36, 12:36] += 300.0
    head = sitk.GetImageFromArray(values)
    head.SetSpacing((2.0, 2.0, 2.0))
    head_path = tmp_path / "head.nii.gz"
    sitk.WriteImage(head, str(head_path))
    fake = (
        f'{sys.executable} -c "import sys, SimpleITK as s; s.WriteImage(s.ReadImage(sys.argv[1]) > 200, sys.argv[2])"'
        " {input} {output}"
    )
    code = benchmarks_main(
        ["peers-speed", "--head", str(head_path), "--peer", "fake", "--peer-command", fake]
        + ["--rounds", "1", "--warmup", "0", "--threads", "1", "--output", str(tmp_path / "out")]
        + ["--pocketseg-options", "--overlap 0.25"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| pocketseg |" in printed and "| fake |" in printed and "Ratio pocketseg / fake" in printed
    (report_path,) = (tmp_path / "out").glob("peers_speed_*.json")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    medians = report["summary"]["medians"]
    # it segments (on ONNX Runtime, no torch import: ~0.3 CPU s for this small head): not a no-op
    assert medians["pocketseg"]["cpu_s"] > 0.15
    assert report["summary"]["ratio_wall"] == pytest.approx(
        medians["pocketseg"]["wall_s"] / medians["fake"]["wall_s"]
    )
    assert report["commands"]["pocketseg"][1:4] == ["-m", "pocketseg_core", "predict"]
    assert report["commands"]["pocketseg"][-2:] == ["--overlap", "0.25"]
    assert report["threads"] == 1 and len(report["load_before"]) == 3


def test_peak_memory_is_the_commands_own_not_the_harness_s() -> None:
    """Linux starts an exec'd child's peak RSS at the peak of the process it was forked from:
    timed straight from a harness holding 400 MB, a 10 MB command reported >= 400 MB."""
    import numpy as np

    held = np.ones(100 * 2**20, dtype=np.float32)  # 400 MB, touched
    timing = peers_speed.time_process(_python("x = bytearray(20 * 2**20)"))
    assert held.sum() > 0
    assert 15 < timing.peak_rss_mb < 150  # the command's 20 MB and its interpreter
