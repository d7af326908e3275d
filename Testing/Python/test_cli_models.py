"""``pocketseg models``: the size table, as JSON and as text."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from pocketseg_core.cli import main
from pocketseg_core.networks import network_names


@pytest.fixture(scope="module")
def models_json(tmp_path_factory) -> dict:
    """One run of ``pocketseg models --json`` for the module (it counts FLOPs of 13 networks),
    with an empty user catalog."""
    buffer = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(buffer):
        patch.setenv("POCKETSEG_MODELS_DIR", str(tmp_path_factory.mktemp("user-models")))
        code = main(["models", "--json"])
    assert code == 0
    return json.loads(buffer.getvalue())


def test_json_lists_the_shipped_models_and_the_task_defaults(models_json):
    rows = {row["name"]: row for row in models_json["bundles"]}
    assert set(rows) == {
        "pocketnet-liver",
        "lvnet-liver",
        "pocketnet-skullstrip",
        "pocketnet-skullstrip-ensemble",
    }
    assert rows["lvnet-liver"]["task"] == "liver" and rows["lvnet-liver"]["modality"] == "CT"
    assert len(rows["lvnet-liver"]["weights_sha256"]) == 64 and rows["lvnet-liver"]["source"] == "shipped"
    defaults = {row["task"]: name for name, row in rows.items() if row["default"]}
    assert defaults == {"liver": "pocketnet-liver", "skullstrip": "pocketnet-skullstrip"}


def test_json_lists_every_network(models_json):
    rows = models_json["networks"]
    assert [row["name"] for row in rows] == network_names()
    for row in rows:
        assert row["params"] > 0
        assert row["gflops"] > 0
        assert row["gmacs"] == pytest.approx(row["gflops"] / 2, rel=1e-3)
        assert row["paper_params"] > 0
        assert row["params_ratio"] == pytest.approx(row["params"] / row["paper_params"])


def test_json_values_match_papers(models_json):
    rows = {row["name"]: row for row in models_json["networks"]}
    for name in ("pocket_unet3d", "unet3d", "pocket_resnet3d", "resnet3d", "pocket_densenet3d", "densenet3d"):
        assert abs(rows[name]["params_ratio"] - 1) < 0.05, name
        assert rows[name]["paper_input"] == [5, 256, 256]
    assert rows["pocket_unet3d"]["paper_params"] == 150_000
    assert rows["pocket_densenet3d"]["pocket_to_full"] < 0.031
    assert rows["unet3d"]["pocket_to_full"] is None
    lvnet = rows["lvnet"]
    assert lvnet["paper_params"] == 1_659_282
    assert lvnet["paper_gflops"] == 58.07
    assert lvnet["paper_input"] == [16, 256, 256]
    assert abs(lvnet["params_ratio"] - 1) < 0.05
    assert abs(lvnet["gflops_ratio"] - 1) < 0.15
    assert lvnet["gflops_ratio"] == pytest.approx(lvnet["gmacs"] / 58.07, rel=1e-3)
    # Pocket U-Net 3D on a 5x256x256 slab: 26 GFLOPs, fixed by the architecture
    assert rows["pocket_unet3d"]["gflops"] == pytest.approx(26.113, abs=0.01)


def test_table_is_readable(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["network", "input", "(D,H,W)"]
    for name in network_names():
        assert any(line.startswith(name + " ") for line in lines), name
    assert "58.07 (mac)" in text
    assert "PocketNet Table 1" in text
    # the installed models follow the network table
    assert any(line.split()[:3] == ["pocketnet-liver", "liver", "(default)"] for line in lines)
    assert any(line.split()[:2] == ["lvnet-liver", "liver"] and "(default)" not in line for line in lines)
