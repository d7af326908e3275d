"""``pocketseg serve`` and its client, over real HTTP on loopback.

The server runs as the real command (``python -m pocketseg_core serve``) in its own process
group; its model catalog is a temporary folder holding a tiny fitted bundle. Every mask is
compared voxel for voxel, and header for header, with a local run of the same bundle.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("fastapi", reason="the server extra (pocketseg-core[server]) is not installed")
pytest.importorskip("uvicorn", reason="the server extra (pocketseg-core[server]) is not installed")

from conftest import REPO_ROOT, shared_file  # noqa: E402
from server_helpers import (  # noqa: E402
    MODEL,
    OBLIQUE,
    SLOW_OPTIONS,
    TOKEN,
    Server,
    child_processes,
    fitted_tiny_bundle,
    job_folders,
    wait_until,
)
from tiny_bundles import make_phantom  # noqa: E402

from pocketseg_core.bundles import load_bundle, register_bundle  # noqa: E402
from pocketseg_core.errors import Cancelled, InputImageError, PocketSegError  # noqa: E402
from pocketseg_core.remote import (  # noqa: E402
    ServerAuthError,
    ServerError,
    ServerUnreachable,
)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    return fitted_tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, bundle_path: Path, monkeypatch_module) -> Path:
    folder = tmp_path_factory.mktemp("catalog")
    monkeypatch_module.setenv("POCKETSEG_MODELS_DIR", str(folder))
    register_bundle(bundle_path)
    return folder


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "token.txt"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def server(models_dir: Path, token_file: Path, tmp_path_factory):
    running = Server(
        models_dir, tmp_path_factory.mktemp("work"), token_file, "--workers", "2", "--max-upload-mb", "2"
    )
    yield running
    running.stop()


def phantom_file(folder: Path, name: str, seed: int, direction=None, size=(48, 56, 44)) -> Path:
    image, _ = make_phantom("MR", size=size, spacing=(4.0, 4.2, 3.8), seed=seed, direction=direction)
    path = folder / name
    sitk.WriteImage(image, str(path), True)
    return path


def local_mask(image_path: Path, bundle_path: Path, folder: Path, options: dict | None = None) -> sitk.Image:
    """The mask a local run writes for the same file (written and read back in the same format)."""
    from pocketseg_core.inference import InferenceOptions, segment_image
    from pocketseg_core.io import image_extension, read_image, strip_image_extension, write_image

    result = segment_image(
        read_image(image_path), load_bundle(bundle_path), InferenceOptions(device="cpu", **(options or {}))
    )
    path = write_image(
        result.mask, folder / f"local-{strip_image_extension(image_path)}{image_extension(image_path)}"
    )
    return sitk.ReadImage(str(path))


def assert_same_mask(remote: sitk.Image, local: sitk.Image, brain_fraction=(0.02, 0.5)) -> None:
    values = sitk.GetArrayFromImage(remote)
    assert np.array_equal(values, sitk.GetArrayFromImage(local))
    assert brain_fraction[0] < values.mean() < brain_fraction[1]  # a brain mask, not an empty or full one
    assert remote.GetSpacing() == local.GetSpacing()
    assert remote.GetOrigin() == local.GetOrigin()
    assert remote.GetDirection() == local.GetDirection()


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize("ending", [".nrrd", ".nii.gz"])
def test_server_mask_equals_local_run(server: Server, bundle_path: Path, tmp_path: Path, ending: str) -> None:
    image_path = phantom_file(tmp_path, f"head{ending}", seed=4, direction=OBLIQUE)
    client = server.client()
    seen: list[float] = []
    status = client.segment_file(
        image_path, tmp_path / f"mask{ending}", MODEL, progress=lambda f, m: seen.append(f) or True
    )
    remote = sitk.ReadImage(str(tmp_path / f"mask{ending}"))
    assert_same_mask(remote, local_mask(image_path, bundle_path, tmp_path))
    # the mask lies on the input's grid
    source = sitk.ReadImage(str(image_path))
    assert remote.GetSize() == source.GetSize()
    # (a NRRD stores direction x spacing: reading it back may move the last bit of a cosine)
    assert np.allclose(remote.GetDirection(), source.GetDirection(), rtol=0, atol=1e-12)
    assert np.allclose(remote.GetOrigin(), source.GetOrigin(), rtol=0, atol=1e-9)
    assert status.device == "cpu" and status.seconds > 0
    assert seen and seen[-1] == 1.0
    offered = {model["name"]: model for model in client.models()}
    assert offered[MODEL]["task"] == "skullstrip" and offered[MODEL]["config"]["name"] == MODEL


def test_server_three_concurrent_clients_all_correct(
    server: Server, bundle_path: Path, tmp_path: Path
) -> None:
    inputs = [
        phantom_file(tmp_path, "a.nrrd", seed=11),
        phantom_file(tmp_path, "b.nii.gz", seed=12, direction=OBLIQUE),
        phantom_file(tmp_path, "c.nrrd", seed=13, size=(44, 52, 48)),
    ]
    outcomes: dict[int, object] = {}

    def one(index: int) -> None:
        try:
            ending = ".nii.gz" if inputs[index].name.endswith(".nii.gz") else ".nrrd"
            server.client().segment_file(inputs[index], tmp_path / f"mask{index}{ending}", MODEL)
            outcomes[index] = tmp_path / f"mask{index}{ending}"
        except BaseException as error:  # reported below
            outcomes[index] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert sorted(outcomes) == [0, 1, 2], outcomes
    for index, path in outcomes.items():
        assert isinstance(path, Path), path
        assert_same_mask(sitk.ReadImage(str(path)), local_mask(inputs[index], bundle_path, tmp_path))
    assert job_folders(server.work_dir) == []


def test_server_cli_predict_with_server(
    server: Server, bundle_path: Path, token_file: Path, tmp_path: Path
) -> None:
    from pocketseg_core.cli import main

    image_path = phantom_file(tmp_path, "head.nrrd", seed=21, direction=OBLIQUE)
    output = tmp_path / "out" / "brain.nii.gz"
    output.parent.mkdir()
    argv = ["predict", "-i", str(image_path), "-o", str(output), "--model", MODEL, "--server", server.url]
    assert main([*argv, "--token-file", str(token_file), "--quiet"]) == 0
    from pocketseg_core.io import read_image

    local = local_mask(image_path, bundle_path, tmp_path)
    remote = read_image(output)
    assert np.array_equal(sitk.GetArrayFromImage(remote), sitk.GetArrayFromImage(local))
    assert np.allclose(remote.GetDirection(), local.GetDirection(), atol=1e-6)
    assert np.allclose(remote.GetOrigin(), local.GetOrigin(), atol=1e-4)
    # without the token: a one-sentence error, no output
    output.unlink()
    assert main([*argv, "--quiet"]) == 1
    assert not output.exists()


def test_server_reports_the_jobs_input_error(server: Server, tmp_path: Path) -> None:
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4\n\n")
    client = server.client()
    job = client.submit(broken, MODEL)
    with pytest.raises(InputImageError, match="cannot be read as an image"):
        client.wait(job)
    with pytest.raises(ServerError, match="no model 'nope'"):
        client.submit(phantom_file(tmp_path, "h.nrrd", seed=1), "nope")
    with pytest.raises(ServerError, match="unknown option"):
        client._json(
            "POST",
            "/v1/jobs",
            query={"model": MODEL, "format": ".nrrd", "options": '{"device": "cuda"}'},
            body=b"x",
        )
    with pytest.raises(ServerError, match="no such job"):
        client.status("not-a-job")


# --------------------------------------------------------------------------- refusals


def test_server_wrong_or_missing_token_is_401(server: Server, tmp_path: Path) -> None:
    for token in (None, "wrong-token-0123456789abcdef", TOKEN[:-1]):
        with pytest.raises(ServerAuthError, match="refused the token"):
            server.client(token).models()
        request = urllib.request.Request(f"{server.url}/v1/jobs/x")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=10)
        assert raised.value.code == 401
    with pytest.raises(ServerAuthError):
        server.client(None).submit(phantom_file(tmp_path, "h.nrrd", seed=1), MODEL)
    assert server.client().health()["workers"] == 2


def test_server_oversized_upload_is_413(server: Server, tmp_path: Path) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = b"\0" * 4096
    # an honest Content-Length over the limit is refused before the body is read
    connection.putrequest("POST", f"/v1/jobs?model={MODEL}&format=.nrrd")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Content-Length", str(3_000_000))
    connection.endheaders()
    connection.send(body)
    response = connection.getresponse()
    assert response.status == 413
    assert "--max-upload-mb" in json.loads(response.read())["detail"]
    connection.close()
    # the client refuses before uploading, in one sentence
    big = phantom_file(tmp_path, "big.nii", seed=2, size=(96, 96, 64))  # 2.4 MB uncompressed
    assert big.stat().st_size > 2_000_000
    with pytest.raises(ServerError, match="accepts at most 2.0 MB"):
        server.client().submit(big, MODEL)
    assert job_folders(server.work_dir) == []


def test_server_refuses_to_bind_beyond_loopback_without_token(tmp_path: Path) -> None:
    from pocketseg_core.cli import main
    from pocketseg_core.cli.serve import is_loopback, server_token

    assert main(["serve", "--host", "0.0.0.0"]) == 1
    with pytest.raises(PocketSegError, match="--token-file"):
        server_token("192.0.2.1", None)
    short = tmp_path / "short.txt"
    short.write_text("abc\n", encoding="utf-8")
    with pytest.raises(PocketSegError, match="at least 16"):
        server_token("0.0.0.0", str(short))
    assert server_token("127.0.0.1", None) is None
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("gpu-box")


def test_server_extra_missing_gives_install_hint(monkeypatch) -> None:
    from pocketseg_core.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(PocketSegError, match=r"pocketseg-core\[server\]"):
        from pocketseg_core.cli import serve

        serve.run(serve.add_parser(__import__("argparse").ArgumentParser().add_subparsers()).parse_args([]))
    assert main(["serve"]) == 1
    # the client needs only the standard library; the package and every other command import
    # without the web packages
    code = (
        "import sys; sys.modules['fastapi'] = sys.modules['uvicorn'] = None\n"
        "import pocketseg_core.remote\n"
        "assert not {'torch', 'numpy', 'SimpleITK'} & set(sys.modules), 'the client is standard library only'\n"
        "import pocketseg_core.server.jobs\n"
        "from pocketseg_core.cli import build_parser, main\n"
        "assert 'serve' in build_parser().format_help()\n"
        "assert main(['evaluate', '--reference', 'missing.nii.gz', '--prediction', 'missing.nii.gz']) == 1\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- cancel and failures


def test_server_cancel_mid_run_kills_the_job(server: Server, tmp_path: Path) -> None:
    client = server.client()
    image = phantom_file(tmp_path, "slow.nrrd", seed=5)
    jobs = [client.submit(image, MODEL, SLOW_OPTIONS) for _ in range(3)]  # 2 workers: one waits
    assert client.status(jobs[2]).state == "queued"
    assert client.cancel(jobs[2]).state == "cancelled"  # in line: it never starts
    wait_until(lambda: len(job_folders(server.work_dir)) == 2, 10, "the queued job's folder to go")
    wait_until(lambda: client.status(jobs[0]).fraction > 0.1, 120, "the job to reach its windows")
    assert client.status(jobs[0]).state == "running"
    wait_until(lambda: len(child_processes(server.work_dir)) == 2, 60, "both job processes")
    for job in jobs[:2]:
        assert client.cancel(job).state == "cancelled"
    wait_until(lambda: not child_processes(server.work_dir), 10, "the jobs' processes to end")
    wait_until(lambda: not job_folders(server.work_dir), 10, "the jobs' folders to go")
    with pytest.raises(Cancelled):
        client.wait(jobs[0])
    with pytest.raises(ServerError, match="no mask"):
        client.fetch_mask(jobs[0], tmp_path / "mask.nrrd")
    assert not (tmp_path / "mask.nrrd").exists()
    assert client.cancel(jobs[0]).state == "cancelled" and client.health()["running"] == 0
    with pytest.raises(ServerError, match="no such job"):  # a second cancel forgets a finished job
        client.status(jobs[0])


def test_server_killed_mid_job_gives_clear_error(models_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    doomed = Server(models_dir, work, None)  # loopback without a token: allowed
    try:
        client = doomed.client(None)
        job = client.submit(phantom_file(tmp_path, "slow.nrrd", seed=6), MODEL, SLOW_OPTIONS)
        wait_until(lambda: client.status(job).fraction > 0.1, 120, "the job to reach its windows")
        os.kill(doomed.process.pid, signal.SIGKILL)  # the server only; its job process is orphaned
        doomed.process.wait()
        with pytest.raises(ServerUnreachable, match=r"did not answer .*check that it runs") as raised:
            client.wait(job)
        assert str(raised.value).count(". ") == 0  # one sentence
        # the orphaned job process notices at its next progress report and removes its folder
        wait_until(lambda: not child_processes(work), 30, "the orphaned job process to stop")
        wait_until(lambda: not job_folders(work), 10, "the orphaned job folder to go")
    finally:
        doomed.stop()
        for pid in child_processes(work):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- the shipped model


def test_server_shipped_skullstrip_on_a_real_head_equals_local(
    shared_data: Path, token_file: Path, tmp_path: Path
) -> None:
    """The shipped skull strip through a server, on the upper left 56x64x56 voxels of a real T1 head
    (the 2 mm MNI152 full head, cropped so that the shipped network runs a few windows only; the
    crop holds skull, scalp and about 49 % brain)."""
    head = sitk.ReadImage(str(shared_file(shared_data, "brain/mni152_t1_2mm.nii.gz")))
    small = tmp_path / "head.nii.gz"
    sitk.WriteImage(sitk.RegionOfInterest(head, [56, 64, 56], [0, 22, 35]), str(small), True)
    empty_catalog = tmp_path / "catalog"
    empty_catalog.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    running = Server(empty_catalog, work, token_file)
    try:
        running.client().segment_file(small, tmp_path / "mask.nii.gz", "skullstrip")
    finally:
        running.stop()
    from pocketseg_core.bundles import resolve_bundle

    local = local_mask(small, resolve_bundle("skullstrip"), tmp_path)
    assert_same_mask(sitk.ReadImage(str(tmp_path / "mask.nii.gz")), local, brain_fraction=(0.3, 0.7))
