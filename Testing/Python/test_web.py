"""PocketSeg Web in a real headless browser: Debian's Chromium driven by Playwright's Python client.

The page (``pocketseg web``) runs as its own process, as a user starts it; the browser uploads a
real head, clicks Skull strip, cancels, runs again, erases, undoes, compares with a reference and
downloads the mask, which must equal ``pocketseg predict``'s on the same file voxel for voxel and
carry the file's exact grid (a left-handed file included). The views are ``<img>`` elements
rendered by the server: the test reads their pixels in the page.

Needs the web extra (trame-slicer, playwright) and a Chromium (``.ci/run`` installs Debian's);
skipped with a message otherwise. ``POCKETSEG_WEB_SCREENSHOTS=docs`` keeps the screenshots.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO_ROOT, shared_file

pytest.importorskip("trame_slicer", reason="PocketSeg Web needs the web extra: pip install -e '.[web]'")
playwright_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright")

CHROMIUM = (
    os.environ.get("POCKETSEG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
#: how long a page may take to show something / a run to end on a loaded 2-core machine (s)
PAGE_TIMEOUT_S, RUN_TIMEOUT_S = 60, 240

# Pixel statistics of one view (an <img> of a blob: URL, same origin: readable through a canvas),
# computed in the page: ``keep`` stores the pixels as the reference, later calls count the pixels
# whose colour changed by more than 40 since (only the counts come back: the polls stay fast).
PIXELS_JS = """
([el, keep]) => {
  const c = document.createElement('canvas');
  c.width = el.naturalWidth; c.height = el.naturalHeight;
  if (!c.width || !c.height) return {size: 0, bright: 0, changed: 0};
  const g = c.getContext('2d'); g.drawImage(el, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  const reference = window.pocketsegReference;
  let bright = 0, changed = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] + d[i + 1] + d[i + 2] > 90) bright++;
    if (reference && reference.length === d.length &&
        Math.abs(d[i] - reference[i]) + Math.abs(d[i + 1] - reference[i + 1]) +
        Math.abs(d[i + 2] - reference[i + 2]) > 40) changed++;
  }
  if (keep) window.pocketsegReference = d;
  return {size: c.width * c.height, bright: bright, changed: changed};
}
"""


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return int(handle.getsockname()[1])


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def start_web(tmp: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """``pocketseg web`` on a free loopback port, as a user starts it; waits until it answers."""
    port = free_port()
    log = open(tmp / f"web-{port}.log", "wb")  # noqa: SIM115 (the child writes it)
    process = subprocess.Popen(
        [sys.executable, "-m", "pocketseg_core", "web", "--port", str(port), *args],
        env=child_env(),
        cwd=str(tmp),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.perf_counter() + PAGE_TIMEOUT_S
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"pocketseg web ended: {(tmp / f'web-{port}.log').read_text('utf-8', 'replace')}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("pocketseg web did not start listening")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cli_mask(image: Path, output: Path, task: str = "skullstrip") -> sitk.Image:
    """``pocketseg predict --task TASK`` on the same file (or DICOM folder), in its own process."""
    subprocess.run(
        [sys.executable, "-m", "pocketseg_core", "predict", "--input", str(image), "--output", str(output)]
        + ["--task", task],
        env=child_env(),
        check=True,
        capture_output=True,
    )
    return sitk.ReadImage(str(output))


def assert_same_grid_and_voxels(downloaded: sitk.Image, expected: sitk.Image) -> None:
    assert downloaded.GetSize() == expected.GetSize()
    np.testing.assert_allclose(downloaded.GetSpacing(), expected.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(downloaded.GetOrigin(), expected.GetOrigin(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(downloaded.GetDirection(), expected.GetDirection(), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(downloaded), sitk.GetArrayFromImage(expected))


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip(
            "no Chromium found (apt-get install chromium; .ci/run installs it) or set POCKETSEG_CHROMIUM"
        )
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Page:
    """The PocketSeg page in the browser, with the few gestures the tests need."""

    def __init__(self, browser, port: int, shots: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 850}, accept_downloads=True)
        self.page.set_default_timeout(PAGE_TIMEOUT_S * 1000)
        self.shots = shots
        self.page.goto(f"http://127.0.0.1:{port}/")
        self.page.wait_for_selector("#ps-open")

    def axial(self):
        """The axial view's image: the lowest, rightmost of the four views (trame-slicer's Quad View)."""
        images = self.page.locator("img.image-display-area")
        boxes = [(images.nth(i).bounding_box(), i) for i in range(images.count())]
        box, index = max(boxes, key=lambda item: (item[0]["y"], item[0]["x"]))
        return images.nth(index), box

    def pixels(self, keep: bool = False) -> dict:
        """The axial view's pixel counts; ``keep`` makes its pixels the reference of later counts."""
        image, _ = self.axial()
        return self.page.evaluate(PIXELS_JS, [image.element_handle(), keep])

    def wait_pixels(self, condition, timeout_s: float = PAGE_TIMEOUT_S) -> tuple[dict, float]:
        started = time.perf_counter()
        while True:
            stats = self.pixels()
            if condition(stats):
                return stats, time.perf_counter() - started
            if time.perf_counter() - started > timeout_s:
                raise AssertionError(
                    f"the axial view never met the condition (last: {stats['bright']} bright, "
                    f"{stats['changed']} changed of {stats['size']})"
                )
            time.sleep(0.1)

    def upload(self, selector: str, path: Path) -> None:
        self.page.set_input_files(selector, str(path))

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def download(self, selector: str, folder: Path) -> Path:
        folder.mkdir(exist_ok=True)
        with self.page.expect_download() as download:
            self.page.click(selector)
        path = folder / download.value.suggested_filename
        download.value.save_as(str(path))
        return path

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / name))

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: POCKETSEG_WEB_SCREENSHOTS (e.g. docs) when set, else the test's folder."""
    folder = Path(os.environ.get("POCKETSEG_WEB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_web_skull_strip_cancel_compare_erase_undo_and_download_equal_the_cli(
    browser, shared_data: Path, tmp_path: Path, shots: Path
):
    head = shared_file(shared_data, "brain/swiss_atlas_t1.mha")
    reference = shared_file(shared_data, "brain/swiss_atlas_brainmask.mha")
    process, port = start_web(tmp_path)
    page = None
    try:
        page = Page(browser, port, shots)
        # open: the head appears in the slice views
        started = time.perf_counter()
        page.upload("#ps-open", head)
        page.page.wait_for_function("document.querySelector('#ps-volume-name').textContent.includes('swiss')")
        page.wait_pixels(lambda s: s["size"] > 0 and s["bright"] > 0.15 * s["size"])
        time_to_image = time.perf_counter() - started
        time.sleep(0.5)  # the last frame of the reset views
        page.pixels(keep=True)  # the reference: the head without any overlay
        page.shot("web_opened.png")

        # a run, then Cancel while it is on: the page answers during the run; nothing is added
        page.page.click("#ps-skullstrip")
        page.page.wait_for_selector("#ps-cancel")
        # the worker's progress reaches the page while the run is on ("checking the image (1 s)")
        page.page.wait_for_function(
            "/\\(\\d+ s\\)$/.test(document.querySelector('#ps-message').textContent.trim())"
        )
        started = time.perf_counter()
        page.page.click("#ps-cancel")
        page.page.wait_for_function("document.querySelector('#ps-message').textContent.includes('Cancelled')")
        time_to_cancel = time.perf_counter() - started
        assert page.page.locator("#ps-result").count() == 0
        assert page.pixels()["changed"] == 0  # no overlay

        # the run: the overlay appears in the axial view
        started = time.perf_counter()
        page.page.click("#ps-skullstrip")
        page.page.wait_for_selector("#ps-result", timeout=RUN_TIMEOUT_S * 1000)
        time_to_result = time.perf_counter() - started
        overlay, time_to_overlay = page.wait_pixels(lambda s: s["changed"] > 0.05 * s["size"])
        assert "Brain:" in page.text("#ps-result")
        time.sleep(1.0)  # the 3D surface's frame
        overlay = page.pixels()
        page.shot("web_skull_strip.png")

        # the CLI on the same file
        expected = cli_mask(head, tmp_path / "cli_brain.mha")
        expected_voxels = int(sitk.GetArrayViewFromImage(expected).sum())

        # compare with the reference: the table holds the eight metrics of pocketseg_core.metrics
        page.upload("#ps-reference", reference)
        page.page.wait_for_selector("#ps-metrics")
        from pocketseg_core.metrics import compute_metrics

        dice = compute_metrics(sitk.ReadImage(str(reference)), expected, label=1)["dice"]
        table = page.text("#ps-metrics")
        assert "Dice" in table and "Hausdorff distance (95th percentile)" in table
        assert len(page.page.locator("#ps-metrics tr").all()) == 8
        assert f"{dice:.4g}" in table
        page.shot("web_compare.png")

        # erase a stroke across the axial view: fewer overlay pixels, fewer voxels in the mask
        page.page.locator(".mdi-eraser").first.click()
        edited = page.pixels()  # the segment and the reference's outline
        _, box = page.axial()
        x, y = box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5
        page.page.mouse.move(x, y)
        page.page.mouse.down()
        page.page.mouse.move(x + box["width"] * 0.3, y, steps=15)
        page.page.mouse.up()
        page.page.mouse.move(5, 5)  # the brush's outline leaves the view
        erased, _ = page.wait_pixels(lambda s: s["changed"] < edited["changed"] - 500)
        page.shot("web_erased.png")
        erased_mask = sitk.ReadImage(str(page.download("#ps-download-mask", tmp_path / "erased")))
        erased_array = sitk.GetArrayViewFromImage(erased_mask)
        expected_array = sitk.GetArrayViewFromImage(expected)
        assert erased_array.sum() < expected_voxels
        assert not np.any(erased_array > expected_array)  # erase only removes

        # undo: the overlay and the mask come back exactly
        page.page.locator(".mdi-undo").first.click()
        page.wait_pixels(lambda s: abs(s["changed"] - edited["changed"]) < 0.005 * s["size"])
        mask_path = page.download("#ps-download-mask", tmp_path / "undone")
        assert mask_path.name == "swiss_atlas_t1_brain.mha"
        assert_same_grid_and_voxels(sitk.ReadImage(str(mask_path)), expected)

        # the segmentation as Slicer saves it
        seg_path = page.download("#ps-download-seg", tmp_path / "seg")
        header = seg_path.read_bytes()[:4000].decode("latin-1")
        assert seg_path.name.endswith(".seg.nrrd") and header.startswith("NRRD")
        assert "Segment0_Name:=Brain" in header
        print(
            f"\nweb: head shown {time_to_image:.2f} s after the upload; Cancel answered in {time_to_cancel:.2f} s; "
            f"result {time_to_result:.1f} s after the click ({page.text('#ps-result')}); overlay in the axial "
            f"view {time_to_overlay:.2f} s after the result; {overlay['changed']} overlay pixels, "
            f"{erased['changed']} after erasing; Dice {dice:.4f}"
        )
    finally:
        if page is not None:
            page.close()
        stop(process)


def mirrored_grid(image: sitk.Image) -> sitk.Image:
    """The same anatomy in space on a grid whose i axis runs the other way (handedness flipped)."""
    mirrored = sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(image)[:, :, ::-1]))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    direction[:, 0] *= -1
    mirrored.SetSpacing(image.GetSpacing())
    mirrored.SetDirection([float(v) for v in direction.ravel()])
    mirrored.SetOrigin(image.TransformIndexToPhysicalPoint((image.GetSize()[0] - 1, 0, 0)))
    return mirrored


def test_web_left_handed_input_keeps_its_geometry(browser, shared_data: Path, tmp_path: Path, shots: Path):
    # Slicer's own readers store a left-handed image with an axis flipped; the page must give the
    # mask back on the file's own grid, unmirrored. FSL's MNI152 file is left-handed; its twin on
    # a right-handed grid (same anatomy in space) checks that the mask lands on the same anatomy.
    source = shared_file(shared_data, "brain/mni152_t1_2mm.nii.gz")
    head = sitk.ReadImage(str(source))
    twin = mirrored_grid(head)
    left, right = (head, twin) if np.linalg.det(np.reshape(head.GetDirection(), (3, 3))) < 0 else (twin, head)
    assert np.linalg.det(np.reshape(left.GetDirection(), (3, 3))) < 0
    path, twin_path = tmp_path / "left_handed_t1.nii.gz", tmp_path / "right_handed_t1.nii.gz"
    sitk.WriteImage(left, str(path))
    sitk.WriteImage(right, str(twin_path))
    process, port = start_web(tmp_path)
    page = None
    try:
        page = Page(browser, port, shots)
        page.upload("#ps-open", path)
        page.page.wait_for_function("document.querySelector('#ps-volume-name').textContent.includes('left')")
        page.page.click("#ps-skullstrip")
        page.page.wait_for_selector("#ps-result", timeout=RUN_TIMEOUT_S * 1000)
        mask_path = page.download("#ps-download-mask", tmp_path / "download")
        assert mask_path.name == "left_handed_t1_brain.nii.gz"
        downloaded = sitk.ReadImage(str(mask_path))
        expected = cli_mask(path, tmp_path / "cli_brain.nii.gz")
        assert_same_grid_and_voxels(downloaded, expected)
        np.testing.assert_allclose(downloaded.GetDirection(), left.GetDirection(), atol=1e-6)
        # the same anatomy as the right-handed twin's mask, voxel i against voxel n-1-i
        back = sitk.GetArrayFromImage(downloaded)[:, :, ::-1]
        twin_mask = sitk.GetArrayFromImage(cli_mask(twin_path, tmp_path / "cli_twin.nii.gz"))
        dice = 2 * np.logical_and(back, twin_mask).sum() / (back.sum() + twin_mask.sum())
        assert dice > 0.98, f"the left-handed file's mask is not on the twin's anatomy (Dice {dice:.3f})"
    finally:
        if page is not None:
            page.close()
        stop(process)


def test_web_liver_of_a_zipped_dicom_series_equals_the_cli(
    browser, shared_data: Path, tmp_path: Path, shots: Path
):
    series = shared_file(shared_data, "liver/ts_abdomen_ct_dicom")
    archive = tmp_path / "abdomen_ct.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in sorted(series.iterdir()):
            handle.write(path, f"abdomen_ct/{path.name}")
    process, port = start_web(tmp_path)
    page = None
    try:
        page = Page(browser, port, shots)
        page.upload("#ps-open", archive)
        page.page.wait_for_function(
            "document.querySelector('#ps-volume-name').textContent.includes('abdomen_ct')"
        )
        page.page.click("#ps-liver")
        page.page.wait_for_selector("#ps-result", timeout=RUN_TIMEOUT_S * 1000)
        assert "Liver:" in page.text("#ps-result")
        mask_path = page.download("#ps-download-mask", tmp_path / "download")
        assert mask_path.name == "abdomen_ct_liver.nrrd"
        expected = cli_mask(series, tmp_path / "cli_liver.nrrd", task="liver")
        assert_same_grid_and_voxels(sitk.ReadImage(str(mask_path)), expected)
    finally:
        if page is not None:
            page.close()
        stop(process)


def test_web_needs_a_token_beyond_loopback_and_checks_it(browser, tmp_path: Path):
    refused = subprocess.run(
        [sys.executable, "-m", "pocketseg_core", "web", "--host", "0.0.0.0"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "give --token-file FILE" in refused.stderr and "Traceback" not in refused.stderr
    token = "t0ken-" + "x" * 30
    token_file = tmp_path / "token.txt"
    token_file.write_text(token + "\n", encoding="utf-8")
    process, port = start_web(tmp_path, "--token-file", str(token_file))
    try:
        with pytest.raises(urllib.error.HTTPError) as without:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=30)
        assert without.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as wrong:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html?token=wrong", timeout=30)
        assert wrong.value.code == 403
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/index.html?token={token}", timeout=30
        ) as answer:
            assert answer.status == 200
            assert "pocketseg_web_token" in answer.headers.get("Set-Cookie", "")
    finally:
        stop(process)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--input", "no-such-head.nii.gz"], "--input no-such-head.nii.gz: no such file or folder"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be positive"),
    ],
)
def test_web_command_says_what_is_wrong_with_its_options(arguments: list[str], message: str):
    answer = subprocess.run(
        [sys.executable, "-m", "pocketseg_core", "web", *arguments],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 1
    assert message in answer.stderr and "Traceback" not in answer.stderr


def test_web_upload_over_the_limit_is_dropped_as_it_comes():
    from pocketseg_core.errors import InputImageError
    from pocketseg_web.app import UploadCollector

    upload = UploadCollector(max_bytes=10)
    assert upload.add([{"name": "a.nii.gz", "content": b"x" * 6}]) is None
    assert upload.add([{"name": "b.nii.gz", "content": b"y" * 6}]) is None  # 12 bytes: dropped
    assert upload.files == []
    with pytest.raises(InputImageError, match="over the 0 MB limit"):
        upload.add([])  # the end of that upload
    assert upload.add([{"name": "c.nii.gz", "content": [b"z", b"z"]}]) is None  # the next one is fresh
    assert upload.add([]) == [("c.nii.gz", b"zz")]
