"""PocketSeg Web: the PocketSeg module's one-click segmentation and editing in a browser.

Built on Kitware's trame-slicer (Slicer's own MRML scene, slice views and segment editor served
to a browser) and on the PocketSeg module's MRML logic (``PocketSeg/PocketSegLib``): a run goes
through the same child-process runner as in Slicer (``python -m pocketseg_core.worker``).

- ``workspace`` the page's scene: open a volume, start/poll/cancel a run, the mask and the
               segmentation as files, the comparison with a reference (no trame import)
- ``app``      the trame page: upload, task, Run/Cancel with progress, views, segment editor,
               metrics table, downloads (thin: every action calls ``workspace``)

``pocketseg web`` (``pocketseg_core/cli/web.py``) starts it; it needs the web extra
(``pip install -e '.[web]'`` from a checkout, which holds ``PocketSeg/PocketSegLib``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Render offscreen through EGL where there is no X display (a server): else VTK tries X first.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def add_module_logic_to_path() -> None:
    """Make ``PocketSegLib`` importable: it lives in the checkout's ``PocketSeg/`` folder (the
    Slicer module's layout), beside this package."""
    try:
        import PocketSegLib  # noqa: F401
    except ImportError:
        folder = Path(__file__).resolve().parent.parent / "PocketSeg"
        if not (folder / "PocketSegLib").is_dir():
            raise ImportError(
                f"PocketSegLib not found beside pocketseg_web ({folder}): run PocketSeg Web from a checkout "
                "of PocketSeg (pip install -e '.[web]')"
            ) from None
        sys.path.insert(0, str(folder))
