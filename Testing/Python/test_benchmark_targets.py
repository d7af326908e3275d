"""``python -m benchmarks targets``: the targets table from the benchmark's records (numbers in,
verdicts out; the runs themselves are the benchmark's, tested in test_benchmark.py)."""

from __future__ import annotations

from benchmarks.targets import render_markdown, targets_table


def record(task: str, job: float, percent: float, rss: float) -> dict:
    seconds = {"read": 0.1, "preprocess": 0.1, "network": job / 2, "postprocess": 0.2, "write": 0.01}
    return {
        "task": task,
        "role": "pocket",
        "seconds": {**seconds, "job": job, "job_cpu": job * 1.5},
        "percent_of_peak_pass": percent,
        "peak_rss_mb": rss,
        "repeats_done": 3,
        "network_pass_seconds": 0.1,
        "gflops_achieved_pass": 95.0,
    }


def report_of(speed: dict, peers: dict | None, table: dict) -> dict:
    """The report ``python -m benchmarks targets`` renders, around the given records and rows."""
    return {
        "date": "2026-11-30 16:00 UTC",
        "machine": "test machine",
        "threads": 2,
        "rounds": 2 if peers else 0,
        "load_before": [0.1],
        "load_after": [0.2],
        "peak_gflops": 200.0,
        "speed_records": speed["records"],
        "peers": peers,
        "table": list(table.values()),
    }


def test_targets_table_says_met_or_not_per_target_and_renders_it() -> None:
    speed = {"records": [record("skullstrip", 0.9, 45.0, 700.0), record("liver", 3.1, 20.0, 1500.0)]}
    peers = {
        "medians": {
            "pocketseg": {"wall_s": 2.6, "cpu_s": 3.0, "peak_rss_mb": 650.0},
            "deepbet": {"wall_s": 8.1, "cpu_s": 9.0, "peak_rss_mb": 1100.0},
        },
        "ratio_wall": 2.6 / 8.1,
        "ratio_cpu": 3.0 / 9.0,
        "ratio_wall_per_round": [0.3, 0.34],
        "ratio_cpu_per_round": [0.33, 0.34],
    }
    table = {row["target"]: row for row in targets_table(speed, peers, "deepbet")}
    assert table["skull strip, in-process job s (wall)"]["verdict"] == "met"
    assert table["skull strip, whole process s (wall)"]["verdict"] == "not met"  # 2.6 > 2.5
    assert table["whole process / deepbet's (wall, same run)"]["verdict"] == "met"  # 0.321 <= 1/3
    assert table["network pass, % of the measured peak"] == {
        "target": "network pass, % of the measured peak",
        "value": 45.0,
        "limit": ">= 40",
        "verdict": "met",
    }
    assert table["skull strip, peak RSS MB (whole process)"]["verdict"] == "met"
    assert table["liver, in-process job s (wall)"]["verdict"] == "not met"
    text = render_markdown(report_of(speed, peers, table))
    assert "| skull strip, in-process job s (wall) | 0.9 | <= 1 | met |" in text
    assert "| liver, in-process job s (wall) | 3.1 | <= 2.5 | not met |" in text
    assert "whole process deepbet: 8.10 s wall, 9.00 s CPU, 1100 MB" in text


def test_targets_without_the_peers_are_not_measured_not_met() -> None:
    rows = targets_table({"records": [record("skullstrip", 1.2, 30.0, 700.0)]}, None, "deepbet")
    verdicts = {row["target"]: row["verdict"] for row in rows}
    assert verdicts["skull strip, whole process s (wall)"] == "not measured"
    assert verdicts["liver, in-process job s (wall)"] == "not measured"
    assert verdicts["skull strip, in-process job s (wall)"] == "not met"


def test_targets_are_the_default_models_the_first_record_of_a_task() -> None:
    # the catalog lists a task's default first (liver: Pocket U-Net 2.5D, then LV-Net by name)
    speed = {
        "records": [
            record("skullstrip", 2.7, 41.0, 745.0),
            record("liver", 2.4, 80.0, 1500.0),
            record("liver", 10.2, 4.0, 2100.0),
        ]
    }
    table = {row["target"]: row for row in targets_table(speed, None, "deepbet")}
    assert table["liver, in-process job s (wall)"]["value"] == 2.4
    assert table["liver, in-process job s (wall)"]["verdict"] == "met"


def test_a_failed_default_model_leaves_its_target_unmeasured_not_taken_from_the_next_model() -> None:
    failed = {"task": "liver", "role": "pocket", "error": "expected input of shape (batch, 5, H, W)"}
    speed = {"records": [record("skullstrip", 0.8, 45.0, 800.0), failed, record("liver", 9.9, 9.0, 2100.0)]}
    table = {row["target"]: row for row in targets_table(speed, None, "deepbet")}
    assert table["liver, in-process job s (wall)"]["verdict"] == "not measured"
    assert table["liver, in-process job s (wall)"]["value"] is None
    assert table["skull strip, in-process job s (wall)"]["verdict"] == "met"
    text = render_markdown(report_of(speed, None, table))
    assert "| liver, in-process job s (wall) | – | <= 2.5 | not measured |" in text
    assert "- liver: failed: expected input of shape (batch, 5, H, W)" in text
