"""The PocketSeg Slicer logic segmenting through a PocketSeg server, on real slicer-core.

"Run on: a PocketSeg server" (``SegmentOptions(server=ServerSettings(url, token))``): a volume
node segmented through ``pocketseg serve`` on loopback must give the segmentation a local run
gives, voxel for voxel; a cancelled run, a wrong token or a server killed mid-job must leave the
scene exactly as it was, with a one-sentence error.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed")
pytest.importorskip("fastapi", reason="the server extra (pocketseg-core[server]) is not installed")

from conftest import REPO_ROOT  # noqa: E402
from server_helpers import (  # noqa: E402
    MODEL,
    OBLIQUE,
    TOKEN,
    Server,
    child_processes,
    fitted_tiny_bundle,
    wait_until,
)
from tiny_bundles import make_phantom  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "PocketSeg"))

from PocketSegLib import create_headless_context  # noqa: E402
from PocketSegLib.logic import PocketSegLogic, SegmentOptions, ServerModel  # noqa: E402
from PocketSegLib.remote_runner import RemoteRun, ServerSettings  # noqa: E402
from PocketSegLib.runner import CANCELLED, FAILED, SUCCEEDED  # noqa: E402
from PocketSegLib.segmentation import segment_array_on_volume  # noqa: E402
from PocketSegLib.volume_io import volume_node_from_image  # noqa: E402

from pocketseg_core.bundles import register_bundle  # noqa: E402
from pocketseg_core.errors import Cancelled, PocketSegError  # noqa: E402
from pocketseg_core.remote import ServerAuthError, ServerUnreachable  # noqa: E402


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    return fitted_tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, bundle_path: Path) -> Path:
    folder = tmp_path_factory.mktemp("catalog")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POCKETSEG_MODELS_DIR", str(folder))
        register_bundle(bundle_path)
    return folder


@pytest.fixture(scope="module")
def server(models_dir: Path, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("secret") / "token.txt"
    token_file.write_text(TOKEN, encoding="utf-8")
    running = Server(models_dir, tmp_path_factory.mktemp("work"), token_file)
    yield running
    running.stop()


@pytest.fixture
def context():
    return create_headless_context()


def phantom_volume(context, seed: int = 7):
    image, _ = make_phantom("MR", size=(48, 56, 44), spacing=(4.0, 4.2, 3.8), seed=seed, direction=OBLIQUE)
    return volume_node_from_image(context.scene, image, "Head")


def scene_ids(context) -> list[str]:
    scene = context.scene
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_slicer_segment_through_server_equals_local(context, server: Server, bundle_path: Path) -> None:
    logic = PocketSegLogic(context)
    volume = phantom_volume(context)
    local = logic.segment(volume, bundle_path, SegmentOptions(device="cpu"))
    seen: list[tuple[float, str]] = []
    remote = logic.segment(
        volume,
        MODEL,
        SegmentOptions(server=ServerSettings(server.url, TOKEN)),
        progress=lambda f, m: seen.append((f, m)) or True,
    )
    assert remote is not local and remote.GetName() == local.GetName() == "Head brain"
    segment = remote.GetSegmentation().GetNthSegment(0)
    assert segment.GetName() == local.GetSegmentation().GetNthSegment(0).GetName() == "Brain"
    remote_voxels = segment_array_on_volume(remote, "Brain", volume)
    local_voxels = segment_array_on_volume(local, "Brain", volume)
    assert np.array_equal(remote_voxels, local_voxels)
    assert 0.02 < remote_voxels.mean() < 0.5
    # progress reached the caller; its fractions in (0, 1) only when a poll falls inside the job,
    # which a quiet machine may finish between two polls (test_server.py checks the job's progress)
    assert seen and all(0.0 <= f <= 1.0 for f, _ in seen)


def test_slicer_server_cancel_and_wrong_token_leave_scene_unchanged(context, server: Server) -> None:
    logic = PocketSegLogic(context)
    volume = phantom_volume(context)
    before = scene_ids(context)
    wrong = SegmentOptions(server=ServerSettings(server.url, "wrong-token-0123456789"))
    with pytest.raises(ServerAuthError, match="refused the token"):
        logic.segment(volume, MODEL, wrong)
    assert scene_ids(context) == before

    running = logic.start_segment(volume, MODEL, SegmentOptions(server=ServerSettings(server.url, TOKEN)))
    assert isinstance(running.run, RemoteRun)
    job = running.run.job_id
    running.cancel()
    assert running.status().state == CANCELLED
    with pytest.raises(Cancelled):
        running.finish()
    assert scene_ids(context) == before
    # the server stopped the job; no job process is left
    seen = server.client().status(job)
    assert seen.state == "cancelled" and seen.mask_format == ".mha"  # the local worker's format
    wait_until(lambda: not child_processes(server.work_dir), 15, "the job process to end")


def test_slicer_server_prepare_and_start_must_name_the_same_place(
    context, server: Server, bundle_path: Path
) -> None:
    """A run prepared with a server's model config starts only on that server, and the other way
    round; a server runs only the models it offers by name. Each refusal is one sentence and the
    scene is left as it was."""
    logic = PocketSegLogic(context)
    volume = phantom_volume(context)
    before = scene_ids(context)
    settings = ServerSettings(server.url, TOKEN)
    on_server = logic.prepare(volume, MODEL, settings)
    assert isinstance(on_server.bundle, ServerModel) and on_server.bundle.name == MODEL
    assert on_server.config.name == logic.model_config(bundle_path).name
    assert [d.name for _, d in on_server.labels] == ["Brain"]
    assert "wrong" not in repr(ServerSettings(server.url, "wrong-token-0123456789"))  # no token in logs
    with pytest.raises(
        PocketSegError, match=r"prepared with the models of the server .*SegmentOptions\(server="
    ):
        logic.start(on_server, SegmentOptions())
    local = logic.prepare(volume, bundle_path)
    with pytest.raises(PocketSegError, match="not prepared for the server"):
        logic.start(local, SegmentOptions(server=settings))
    with pytest.raises(PocketSegError, match="runs its own models"):
        logic.prepare(volume, bundle_path, settings)
    assert logic.running() == [] and scene_ids(context) == before


def test_slicer_server_killed_mid_job_leaves_scene_unchanged(
    context, models_dir: Path, tmp_path: Path
) -> None:
    logic = PocketSegLogic(context)
    volume = phantom_volume(context)
    before = scene_ids(context)
    work = tmp_path / "work"
    work.mkdir()
    doomed = Server(models_dir, work, None)
    try:
        running = logic.start_segment(
            volume, MODEL, SegmentOptions(tta=True, server=ServerSettings(doomed.url))
        )
        running.run.unreachable_grace_s = 0.0  # fail at the first unanswered poll, not 10 s later
        assert running.status().state not in (SUCCEEDED, FAILED)
        os.kill(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait()
        deadline = time.monotonic() + 10
        while not running.status().done and time.monotonic() < deadline:
            time.sleep(0.1)
        status = running.status()
        assert status.state == FAILED
        assert isinstance(status.error, ServerUnreachable)
        assert "did not answer" in str(status.error) and "check that it runs" in str(status.error)
        with pytest.raises(ServerUnreachable):
            running.finish()
        assert scene_ids(context) == before
        assert running.run.work_dir is not None and not running.run.work_dir.exists()
    finally:
        doomed.stop()
        for pid in child_processes(work):
            os.kill(pid, signal.SIGKILL)
