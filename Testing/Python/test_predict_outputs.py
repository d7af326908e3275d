"""``pocketseg predict``'s outputs: all or nothing, and a failure never costs the user a file.

Issue 15, item 6: a run that wrote the masked volume (replacing the user's earlier one) and then
failed on the mask deleted the new masked volume in its rollback, so the earlier file was gone
too. Now every output is staged beside its target and moved into place only when all are written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("torch")

from tiny_bundles import make_phantom, make_tiny_bundle  # noqa: E402

from pocketseg_core.bundles import load_bundle  # noqa: E402
from pocketseg_core.cli.predict import PredictJob, predict_one  # noqa: E402
from pocketseg_core.errors import ImageWriteError  # noqa: E402
from pocketseg_core.inference import InferenceOptions  # noqa: E402
from pocketseg_core.staged_outputs import StagedOutputs  # noqa: E402


def constant_image(value: float, size=(6, 7, 8)) -> sitk.Image:
    return sitk.GetImageFromArray(np.full(size[::-1], value, dtype=np.float32))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny", fit=False))


def test_failed_run_keeps_the_users_earlier_masked_volume(bundle, tmp_path):
    image, _ = make_phantom("MR", size=(24, 24, 20))
    source = tmp_path / "head.nii.gz"
    sitk.WriteImage(image, str(source))
    earlier = tmp_path / "head_stripped.nii.gz"
    sitk.WriteImage(constant_image(7.0), str(earlier))  # the user's masked volume of an earlier run
    earlier_bytes = earlier.read_bytes()
    job = PredictJob(input=source, output=tmp_path / "gone" / "mask.nii.gz", masked_volume=earlier)
    with pytest.raises(ImageWriteError, match="does not exist"):
        predict_one(job, bundle, InferenceOptions(device="cpu"), show_progress=False)
    assert earlier.read_bytes() == earlier_bytes  # still the user's file, byte for byte
    assert leftovers(tmp_path) == []


def test_successful_run_replaces_every_output(bundle, tmp_path):
    image, _ = make_phantom("MR", size=(24, 24, 20))
    source = tmp_path / "head.nrrd"
    sitk.WriteImage(image, str(source))
    mask, masked = tmp_path / "mask.mha", tmp_path / "masked.mhd"  # one with a detached header
    sitk.WriteImage(constant_image(1.0), str(mask))
    sitk.WriteImage(constant_image(2.0), str(masked))
    predict_one(
        PredictJob(input=source, output=mask, masked_volume=masked),
        bundle,
        InferenceOptions(device="cpu"),
        False,
    )
    assert sitk.ReadImage(str(mask)).GetSize() == image.GetSize()
    written = sitk.ReadImage(str(masked))
    assert written.GetSize() == image.GetSize()
    assert leftovers(tmp_path) == []


def test_a_failed_commit_puts_back_what_was_there(tmp_path):
    first = tmp_path / "first.nii.gz"
    sitk.WriteImage(constant_image(3.0), str(first))
    before = first.read_bytes()
    blocked = tmp_path / "second.nii.gz"
    blocked.mkdir()  # a folder where the second output should go: moving onto it fails
    (blocked / "keep.txt").write_text("mine", encoding="utf-8")
    with StagedOutputs() as outputs:
        outputs.write(constant_image(9.0), first)
        outputs.write(constant_image(9.0), blocked)
        with pytest.raises(ImageWriteError, match="the files that were there before are unchanged"):
            outputs.commit()
    assert first.read_bytes() == before
    assert (blocked / "keep.txt").read_text(encoding="utf-8") == "mine"
    assert leftovers(tmp_path) == []


def test_nothing_is_visible_before_commit_and_discard_leaves_nothing(tmp_path):
    target = tmp_path / "out.nii.gz"
    with StagedOutputs() as outputs:
        outputs.write(constant_image(5.0), target)
        assert not target.exists()
    assert not target.exists() and leftovers(tmp_path) == []
