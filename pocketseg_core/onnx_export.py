"""A bundle's network exported to ONNX, for ONNX Runtime (:mod:`pocketseg_core.inference.onnx_backend`).

The export traces the bundle's eval-mode network with torch's TorchScript-based exporter
(opset 17, any input size along z, y, x), writes the network's ``spatial_divisor`` into the
model's metadata (inference pads to it without building the torch network), and stores the
file in the bundle as ``network.onnx`` with its sha256 (:func:`pocketseg_core.bundles.add_onnx_model`).
The same weights and torch version give the same bytes, so a recipe reproduces the file too.

Needs torch and the ``onnx`` package (training and export only; running needs neither).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from pocketseg_core.bundles import add_onnx_model, load_bundle
from pocketseg_core.errors import PocketSegError
from pocketseg_core.inference.onnx_backend import DIVISOR_KEY, ONNX_INPUT, ONNX_OUTPUT

OPSET = 17


def onnx_export_problem() -> str:
    """Why this process cannot export ('' when it can): the ``onnx`` package is missing."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return "the onnx package is not installed (pip install onnx)"
    return ""


def export_network(network, spatial_dims: int = 3) -> bytes:
    """The ONNX bytes of an eval-mode ``network`` (input ``image`` ``(1, 1, z, y, x)``, output
    ``logits`` ``(1, K, z, y, x)``, every spatial size free)."""
    import onnx
    import torch

    if spatial_dims != 3:
        raise PocketSegError("only 3D networks are exported to ONNX (2D ones run on torch)")
    divisor = tuple(int(d) for d in getattr(network, "spatial_divisor", (1, 1, 1)))
    network = network.eval().to("cpu", memory_format=torch.contiguous_format)
    example = torch.zeros((1, 1, *(2 * d for d in divisor)), dtype=torch.float32)
    axes = {2: "z", 3: "y", 4: "x"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the tracer's notes on shape checks that hold for any size
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: axes, ONNX_OUTPUT: axes},
        )
    model = onnx.load_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = DIVISOR_KEY, ",".join(str(d) for d in divisor)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def export_bundle(folder: str | os.PathLike) -> Path:
    """Export the bundle ``folder``'s network to ``network.onnx`` inside it (atomic; the
    weights are unchanged) and return the folder."""
    problem = onnx_export_problem()
    if problem:
        raise PocketSegError(f"cannot export to ONNX: {problem}")
    bundle = load_bundle(folder)
    if bundle.config.window_mode != "patch3d":
        raise PocketSegError(
            f"bundle {bundle.config.name} runs in {bundle.config.window_mode} windows of a 2D/slab "
            "network; only 3D networks are exported to ONNX"
        )
    model = export_network(bundle.build_network("cpu"))
    return add_onnx_model(Path(folder), model)
