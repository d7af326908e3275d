"""Model bundles: a network's config, its weights and their checksum, in one folder.

A bundle is a folder holding

- ``bundle.json``: the :class:`BundleConfig` as JSON, including ``weights_sha256``;
- ``weights.pt``: a plain ``state_dict`` saved with ``torch.save``.

Loading verifies the SHA-256 of ``weights.pt`` *before* handing the bytes to torch, and loads
them with ``torch.load(weights_only=True)``, so a corrupt, truncated or tampered file is a
:class:`~pocketseg_core.errors.BundleError` naming the file, never a traceback from deep inside
torch, and never arbitrary code execution.

Bundles are found by path, by name in one of two catalogs, or by task alias:

- the shipped catalog, ``pocketseg_core/models/catalog.json`` (bundles inside the package);
- the user catalog, a folder (default ``~/.pocketseg/models``, or ``$POCKETSEG_MODELS_DIR``)
  whose sub-folders are bundles; :func:`register_bundle` copies a trained bundle there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketseg_core.anatomy import structure_for_task
from pocketseg_core.errors import BundleError, PocketSegError

BUNDLE_FORMAT_VERSION = 1
CONFIG_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
#: optional: the network exported to ONNX from weights.pt (pocketseg_core.onnx_export), run by
#: ONNX Runtime where it can (pocketseg_core.inference.onnx_backend); sha256 in onnx_sha256
ONNX_FILE = "network.onnx"
SHIPPED_CATALOG = Path(__file__).resolve().parent / "models" / "catalog.json"
MODELS_DIR_ENV = "POCKETSEG_MODELS_DIR"

#: largest weights file PocketSeg loads: the shipped models are ~0.2 MB, the papers' full-size
#: networks tens of MB; a larger file is refused before a byte is hashed or read
MAX_WEIGHTS_BYTES = 2**31
#: largest ONNX network PocketSeg loads (the shipped ones are ~0.3 MB)
MAX_ONNX_BYTES = 2**30

MODALITIES = ("MR", "CT")
WINDOW_MODES = ("patch3d", "slab", "slice2d")
PREPROCESSING_KINDS = ("mr_zscore", "ct_window")
#: keys of an MR bundle's optional ``preprocessing.anchor`` (read by
#: :class:`pocketseg_core.preprocessing.IntensityAnchor`; kept here so that reading a bundle
#: imports neither numpy nor SimpleITK)
ANCHOR_KEYS = ("label", "median", "iqr", "median_tolerance", "iqr_ratio_tolerance")
POSTPROCESSING_KEYS = frozenset({"cut_bridges_mm", "fill_holes", "cut_below_waist"})
FILL_HOLES_MODES = ("3d", "slices")


@dataclass
class LabelInfo:
    """One output label of a model: its value in the mask, and how to show it."""

    value: int
    name: str
    color: tuple[float, float, float]  # r, g, b in [0, 1]
    terminology: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "name": self.name,
            "color": list(self.color),
            "terminology": self.terminology,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "label") -> LabelInfo:
        try:
            value = int(data["value"])
            name = str(data["name"])
            color = tuple(float(c) for c in data.get("color", (1.0, 1.0, 0.0)))
            terminology = dict(data.get("terminology", {}))
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as error:
            raise BundleError(
                f"{where}: needs integer 'value', 'name' and 'color' [r, g, b] ({error})"
            ) from None
        if value < 1 or value > 255:
            raise BundleError(f"{where}: value {value} must be between 1 and 255 (0 is background)")
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise BundleError(f"{where}: color must be three numbers between 0 and 1, got {list(color)}")
        return cls(value=value, name=name, color=color, terminology=terminology)


def standard_label(task: str) -> LabelInfo:
    """The label of a shipped task: name, colour and SNOMED-CT terminology from the anatomy table."""
    try:
        structure = structure_for_task(task)
    except PocketSegError as error:
        raise BundleError(str(error)) from None
    return LabelInfo.from_dict(structure.label(1), f"anatomy table: {task}")


@dataclass
class BundleConfig:
    """Everything inference needs to know about a model besides its weights.

    Spacings are in mm in SimpleITK's ``(x, y, z)`` order; the window size is in torch's
    ``(z, y, x)`` order (the order of the network's spatial dimensions), where 0 means "the
    whole extent of the image along that axis" (e.g. ``[5, 0, 0]``: 5-slice slabs of whole
    slices, as in PocketNet section 3).
    """

    name: str
    network: str
    modality: str
    labels: list[LabelInfo]
    spacing: tuple[float, float, float]
    window_mode: str = "patch3d"
    window_size_zyx: tuple[int, int, int] = (96, 96, 96)
    #: ``slice2d`` only: neighbouring slices each side that the network sees as extra input
    #: channels (2.5D: ``2 c + 1`` channels, the slice itself in the middle; 0 = one slice)
    context_slices: int = 0
    network_args: dict[str, Any] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=lambda: {"kind": "mr_zscore"})
    fast_spacing: tuple[float, float, float] | None = None
    #: mask clean-up beyond the largest component, chosen per model on validation data:
    #: ``{"cut_bridges_mm": r}`` detaches blobs hanging on by bridges thinner than 2 r mm
    #: (:func:`pocketseg_core.postprocessing.cut_thin_bridges`); ``{"fill_holes": "slices"}``
    #: fills holes in every axial slice (``"3d"``: in 3D), as the reference labels are drawn;
    #: ``{"cut_below_waist": true}`` drops a brain mask's leak through the foramen magnum into the
    #: neck (:func:`pocketseg_core.postprocessing.cut_below_waist`)
    postprocessing: dict[str, Any] = field(default_factory=dict)
    orientation: str = "LPS"
    title: str = ""
    version: str = "0.0.0"
    description: str = ""
    task: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    #: trainings of the network (different seeds) whose softmax inference averages
    #: (:class:`~pocketseg_core.networks.ensemble.ProbabilityEnsemble`); 1 = one network
    members: int = 1
    #: the network arguments of each member when they differ (an ensemble of a small and a wider
    #: network, say: ``members`` dicts, member ``k`` built with the ``k``-th); empty: every member
    #: is built with ``network_args``
    member_network_args: list[dict[str, Any]] = field(default_factory=list)
    weights_sha256: str = ""
    #: sha256 of network.onnx; "" = the bundle has no ONNX network
    onnx_sha256: str = ""
    format_version: int = BUNDLE_FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        """Network output channels: background plus one per label value (values are 1..N)."""
        return max(label.value for label in self.labels) + 1

    @property
    def input_channels(self) -> int:
        """Network input channels: the slice (or volume) and ``context_slices`` neighbours each side."""
        return 2 * self.context_slices + 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`BundleError` naming the first field that cannot be used."""
        if not self.name or not isinstance(self.name, str):
            raise BundleError("bundle config: 'name' must be a non-empty string")
        check_bundle_name(self.name, "bundle config: 'name'")
        where = f"bundle '{self.name}'"
        if not isinstance(self.weights_sha256, str) or (
            self.weights_sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.weights_sha256)
        ):
            raise BundleError(f"{where}: weights_sha256 must be 64 lower-case hex digits")
        if not self.network:
            raise BundleError(f"{where}: 'network' must name a network of the registry (e.g. pocket_unet3d)")
        if isinstance(self.members, bool) or not isinstance(self.members, int) or not 1 <= self.members <= 16:
            raise BundleError(f"{where}: members must be a whole number from 1 to 16, got {self.members!r}")
        if not isinstance(self.member_network_args, list) or (
            self.member_network_args
            and (
                len(self.member_network_args) != self.members
                or not all(isinstance(args, Mapping) for args in self.member_network_args)
            )
        ):
            raise BundleError(
                f"{where}: member_network_args must list one dict of network arguments per member "
                f"({self.members}), or be empty; got {self.member_network_args!r}"
            )
        if self.modality not in MODALITIES:
            raise BundleError(f"{where}: modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.window_mode not in WINDOW_MODES:
            raise BundleError(f"{where}: window_mode must be one of {WINDOW_MODES}, got {self.window_mode!r}")
        if not self.labels:
            raise BundleError(f"{where}: 'labels' must list at least one label")
        values = [label.value for label in self.labels]
        if len(set(values)) != len(values):
            raise BundleError(f"{where}: label values must be unique, got {values}")
        self.spacing = _spacing(self.spacing, f"{where}: spacing")
        if self.fast_spacing is not None:
            self.fast_spacing = _spacing(self.fast_spacing, f"{where}: fast_spacing")
        try:
            size = tuple(int(s) for s in self.window_size_zyx)
        except (TypeError, ValueError):
            raise BundleError(f"{where}: window_size_zyx must be three integers") from None
        if len(size) != 3 or any(s < 0 for s in size):
            raise BundleError(
                f"{where}: window_size_zyx must be three integers >= 0 (0 = whole axis), got {size}"
            )
        if self.window_mode == "slice2d":
            size = (1, size[1], size[2])
        elif size[0] == 0 and self.window_mode == "slab":  # a patch3d window of 0s: one whole-grid pass
            raise BundleError(
                f"{where}: window_size_zyx[0] (slices per window) must be > 0 for {self.window_mode}"
            )
        self.window_size_zyx = size
        self._validate_context_slices(where)
        kind = self.preprocessing.get("kind") if isinstance(self.preprocessing, Mapping) else None
        if kind not in PREPROCESSING_KINDS:
            raise BundleError(
                f"{where}: preprocessing.kind must be one of {PREPROCESSING_KINDS}, got {kind!r}"
            )
        if kind == "ct_window":
            window = self.preprocessing.get("window")
            if not (
                isinstance(window, list | tuple) and len(window) == 2 and float(window[0]) < float(window[1])
            ):
                raise BundleError(
                    f"{where}: ct_window preprocessing needs 'window': [low, high] in HU, low < high"
                )
        self._validate_anchor(where, kind, values)
        if not isinstance(self.postprocessing, Mapping):
            raise BundleError(f'{where}: postprocessing must be an object, e.g. {{"cut_bridges_mm": 4.0}}')
        unknown = sorted(set(self.postprocessing) - POSTPROCESSING_KEYS)
        if unknown:
            raise BundleError(
                f"{where}: unknown postprocessing keys {unknown}; known: {sorted(POSTPROCESSING_KEYS)}"
            )
        radius = self.postprocessing.get("cut_bridges_mm")
        if radius is not None and not (isinstance(radius, int | float) and radius > 0):
            raise BundleError(f"{where}: postprocessing.cut_bridges_mm must be a positive number of mm")
        fill = self.postprocessing.get("fill_holes")
        if fill is not None and fill not in FILL_HOLES_MODES:
            raise BundleError(
                f"{where}: postprocessing.fill_holes must be one of {FILL_HOLES_MODES}, got {fill!r}"
            )
        waist = self.postprocessing.get("cut_below_waist")
        if waist is not None and not isinstance(waist, bool):
            raise BundleError(f"{where}: postprocessing.cut_below_waist must be true or false, got {waist!r}")
        if self.orientation not in ("LPS", "RAS"):
            raise BundleError(f"{where}: orientation must be 'LPS' or 'RAS', got {self.orientation!r}")

    def _validate_anchor(self, where: str, kind: str, label_values: list[int]) -> None:
        """``preprocessing.anchor`` (optional, MR only): where the label's normalised intensities
        sat in the training heads (:class:`pocketseg_core.preprocessing.IntensityAnchor`)."""
        anchor = self.preprocessing.get("anchor")
        if anchor is None:
            return
        example = (
            '{"label": 1, "median": -0.1, "iqr": 1.55, "median_tolerance": 0.6, "iqr_ratio_tolerance": 1.4}'
        )
        if kind != "mr_zscore" or not isinstance(anchor, Mapping) or sorted(anchor) != sorted(ANCHOR_KEYS):
            raise BundleError(
                f"{where}: preprocessing.anchor must be an object with exactly the keys {list(ANCHOR_KEYS)} "
                f"(and only with mr_zscore), e.g. {example}; got {anchor!r}"
            )
        numbers = {key: anchor[key] for key in ANCHOR_KEYS}
        if not all(
            isinstance(value, int | float) and not isinstance(value, bool) for value in numbers.values()
        ):
            raise BundleError(f"{where}: preprocessing.anchor values must be numbers, e.g. {example}")
        if numbers["label"] not in label_values:
            raise BundleError(
                f"{where}: preprocessing.anchor.label {numbers['label']} is none of the label values {label_values}"
            )
        if not (
            numbers["iqr"] > 0 and numbers["median_tolerance"] > 0 and numbers["iqr_ratio_tolerance"] > 1
        ):
            raise BundleError(
                f"{where}: preprocessing.anchor needs iqr > 0, median_tolerance > 0 and "
                f"iqr_ratio_tolerance > 1, e.g. {example}"
            )

    def _validate_context_slices(self, where: str) -> None:
        context = self.context_slices
        if not isinstance(context, int) or isinstance(context, bool) or context < 0:
            raise BundleError(f"{where}: context_slices must be an integer >= 0, got {context!r}")
        if context and self.window_mode != "slice2d":
            raise BundleError(
                f"{where}: context_slices is for 2D networks (window_mode slice2d), not {self.window_mode}"
            )
        in_channels = self.network_args.get("in_channels", 1) if isinstance(self.network_args, Mapping) else 1
        if in_channels != self.input_channels:
            raise BundleError(
                f"{where}: the network takes {in_channels} input channel(s) but context_slices "
                f"{context} gives {self.input_channels} (the slice and {context} neighbour(s) each side); "
                "set network_args.in_channels to 2 * context_slices + 1"
            )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["labels"] = [label.to_dict() for label in self.labels]
        data["spacing"] = list(self.spacing)
        data["fast_spacing"] = list(self.fast_spacing) if self.fast_spacing else None
        data["window_size_zyx"] = list(self.window_size_zyx)
        if not self.onnx_sha256:
            del data["onnx_sha256"]  # bundles without an ONNX network keep the format they had
        if not self.context_slices:
            del data["context_slices"]  # one-slice and 3D bundles keep the format they had
        if self.members == 1:
            del data["members"]  # likewise single networks
        if not self.member_network_args:
            del data["member_network_args"]  # and ensembles of one configuration
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "bundle.json") -> BundleConfig:
        if not isinstance(data, Mapping):
            raise BundleError(f"{source}: expected a JSON object")
        version = data.get("format_version", BUNDLE_FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleError(f"{source}: format_version must be an integer, got {version!r}")
        if version > BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{source}: bundle format {version} is newer than this PocketSeg understands "
                f"({BUNDLE_FORMAT_VERSION}); update PocketSeg"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BundleError(f"{source}: unknown keys {unknown}; known keys are {sorted(known)}")
        missing = [k for k in ("name", "network", "modality", "labels", "spacing") if k not in data]
        if missing:
            raise BundleError(f"{source}: missing required keys {missing}")
        values = dict(data)
        labels = values.get("labels")
        if not isinstance(labels, list):
            raise BundleError(f"{source}: 'labels' must be a list")
        values["labels"] = [
            LabelInfo.from_dict(item, f"{source}: labels[{i}]") for i, item in enumerate(labels)
        ]
        try:
            return cls(**values)
        except (TypeError, ValueError, OverflowError, AttributeError) as error:
            # a value of the wrong type deep in a field (e.g. a string where numbers belong)
            raise BundleError(
                f"{source}: a value has the wrong type or range ({error}); fix or re-export it"
            ) from None


def _spacing(value: Any, where: str) -> tuple[float, float, float]:
    try:
        spacing = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise BundleError(f"{where} must be three numbers in mm (x, y, z)") from None
    if len(spacing) != 3 or not all(v > 0 for v in spacing):
        raise BundleError(f"{where} must be three positive numbers in mm (x, y, z), got {list(spacing)}")
    return spacing


@dataclass
class ModelBundle:
    """A loaded bundle: its config, the verified state dict, and the folder it came from."""

    config: BundleConfig
    state_dict: dict[str, Any] | None  # None: checked by sha256 but not read yet (read on use)
    path: Path | None = None

    def build_network(self, device: Any = "cpu"):
        """The network of the config with the bundle's weights, on ``device``, in eval mode."""
        from pocketseg_core.networks import create_network
        from pocketseg_core.networks.ensemble import ProbabilityEnsemble

        if self.state_dict is None:
            if self.path is None:
                raise BundleError(f"{self._where()} holds no weights")
            self.state_dict = _read_weights(self.path, self.config)

        try:
            networks = [create_network(self.config.network, **args) for args in self.member_arguments()]
            network = networks[0] if len(networks) == 1 else ProbabilityEnsemble(networks)
        except Exception as error:  # the registry's own message names the argument
            raise BundleError(
                f"{self._where()}: cannot build network '{self.config.network}': {error}"
            ) from None
        try:
            network.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()[:3]
            members = f", {self.config.members} members" if self.config.members > 1 else ""
            arguments = self.config.member_network_args or self.config.network_args
            raise BundleError(
                f"{self._where()}: the weights do not fit network '{self.config.network}' with "
                f"arguments {arguments}{members} ({' '.join(first)}); the bundle was saved "
                "from another network configuration: re-export it or fix network_args in bundle.json"
            ) from None
        return network.to(device).eval()

    def member_arguments(self) -> list[dict[str, Any]]:
        """The network arguments of each member (one dict for a single network)."""
        if self.config.member_network_args:
            return [dict(args) for args in self.config.member_network_args]
        return [dict(self.config.network_args) for _ in range(self.config.members)]

    def _where(self) -> str:
        return f"bundle '{self.config.name}'" + (f" at {self.path}" if self.path else "")


def _umask() -> int:
    from pocketseg_core.io import current_umask

    return current_umask()


def check_bundle_name(name: str, what: str = "model name") -> str:
    """Refuse a bundle name that is not one plain path component, so that a catalog folder
    ``<catalog>/<name>`` can never point outside the catalog (``..``, ``/abs``, ``a/b``).

    Returns:
        ``name`` unchanged.

    Raises:
        BundleError: one sentence saying which characters are allowed.
    """
    problem = ""
    if not isinstance(name, str) or not name.strip():
        problem = "is empty"
    elif name in (".", "..") or name.startswith("."):
        problem = "starts with a dot"
    elif any(sep in name for sep in ("/", "\\", os.sep, os.altsep or "/")) or ":" in name:
        problem = "contains a path separator"
    elif any(ord(c) < 32 for c in name) or len(name) > 120:
        problem = "contains control characters or is longer than 120 characters"
    if problem:
        raise BundleError(
            f"{what} {name!r} {problem}; a model name is one folder name: letters, digits, "
            f"'-', '_' and '.' (not first), e.g. my-liver-model"
        )
    return name


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(folder: str | os.PathLike, config: BundleConfig, state_dict: Mapping[str, Any]) -> Path:
    """Write a bundle folder atomically and return its path.

    The files go to a temporary sibling folder first, which then replaces ``folder`` (an
    existing bundle is replaced only once the new one is complete). ``config.weights_sha256`` is
    set from the written weights.
    """
    import torch

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _staged(folder) as temp:
        weights = {k: v.detach().cpu().clone() if hasattr(v, "detach") else v for k, v in state_dict.items()}
        torch.save(weights, temp / WEIGHTS_FILE)
        config.weights_sha256 = sha256_of(temp / WEIGHTS_FILE)
        config.validate()
        _write_config(temp, config)
    return folder


@contextlib.contextmanager
def _staged(folder: Path) -> Iterator[Path]:
    """A new staging folder beside ``folder`` to write a bundle's files in: when the block ends
    without error it replaces ``folder`` as a whole (:func:`_replace_folder`), else it is removed."""
    temp = _staging_folder(folder)
    try:
        yield temp
        _replace_folder(temp, folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _write_config(folder: Path, config: BundleConfig) -> None:
    (folder / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")


def _staging_folder(target: Path) -> Path:
    """A new hidden folder beside ``target`` (same file system) to assemble a bundle in."""
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    # mkdtemp's 0700 would make a shipped or shared bundle unreadable to others: the umask decides
    os.chmod(temp, 0o777 & ~_umask())
    return temp


def _replace_folder(staged: Path, target: Path) -> None:
    """Move the complete folder ``staged`` to ``target``. An existing ``target`` is moved aside
    first and deleted only once the new one is in place (put back if the move fails), so a
    reader never finds a half bundle and a failure never loses the old one."""
    if not target.exists():
        os.replace(staged, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, aside / "bundle")
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(aside / "bundle", target)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def read_config(folder: str | os.PathLike) -> BundleConfig:
    """The config of a bundle folder (weights not read)."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise BundleError(f"{folder} is not a model bundle: {CONFIG_FILE} is missing")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(
            f"{config_path} is not valid JSON ({error}); restore or re-export the bundle"
        ) from None
    try:
        return BundleConfig.from_dict(data, source=str(config_path))
    except BundleError as error:
        if str(config_path) in str(error):
            raise
        raise BundleError(f"{config_path}: {error}") from None


def load_bundle(name_or_path: str | os.PathLike, read_weights: bool = True) -> ModelBundle:
    """Load a bundle by folder path, catalog name or task alias (``skullstrip``, ``liver``).

    The checksum of ``weights.pt`` is checked (streamed, after a size check) before torch
    reads a byte of it. ``read_weights=False`` checks it and stops there: no torch import
    (a run on ONNX Runtime needs none); :meth:`ModelBundle.build_network` reads the weights
    (checking them again) if it is called.
    """
    folder = resolve_bundle(name_or_path)
    config = read_config(folder)
    state_dict = _read_weights(folder, config, load=read_weights)
    return ModelBundle(config=config, state_dict=state_dict, path=folder)


def _read_weights(folder: Path, config: BundleConfig, load: bool = True) -> dict[str, Any] | None:
    """The state dict of ``folder``'s weights.pt once its size and sha256 are checked against
    the catalog and the config (None with ``load=False``: checked only, torch not imported)."""
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise BundleError(f"{weights_path} is missing; the bundle is incomplete: re-export or re-install it")
    if not config.weights_sha256:
        raise BundleError(
            f"{folder / CONFIG_FILE} has no weights_sha256; re-save the bundle with save_bundle"
        )
    _check_size(weights_path, MAX_WEIGHTS_BYTES)
    # One open file: hashed in blocks, then read by torch from the start, so what torch reads
    # is what was checked, and memory never holds the file twice.
    with open(weights_path, "rb") as stream:
        digest = hashlib.sha256()
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
        _check_digest(weights_path, digest.hexdigest(), folder, config.weights_sha256, "weights_sha256")
        return _load_state_dict(stream, weights_path) if load else None


def _check_size(path: Path, limit: int) -> None:
    size = path.stat().st_size
    if size > limit:
        raise BundleError(
            f"{path} is {size / 2**30:.1f} GiB, far larger than any PocketSeg model "
            f"(at most {limit / 2**30:.0f} GiB): it is not this bundle's file; re-export the bundle"
        )


def _check_digest(path: Path, actual: str, folder: Path, expected: str, key: str) -> None:
    """Refuse ``path`` unless ``actual`` (its sha256) is what the shipped catalog (for a shipped
    bundle) and the bundle's ``key`` (``weights_sha256`` or ``onnx_sha256``) record."""
    shipped = _shipped_entry_at(folder)
    recorded = getattr(shipped, key, "") if shipped is not None else ""
    if recorded and actual != recorded:
        raise BundleError(
            f"{path} is not the file the model catalog ships (sha256 {actual[:12]}..., catalog "
            f"{recorded[:12]}...): the installation was modified; reinstall PocketSeg"
        )
    if actual != expected:
        raise BundleError(
            f"{path} fails its checksum (sha256 {actual[:12]}..., expected "
            f"{expected[:12]}...): the file is corrupt, truncated or was replaced; "
            "re-install or re-train the model"
        )


def read_onnx_model(bundle: ModelBundle) -> bytes:
    """The bytes of ``bundle``'s ONNX network, once their sha256 matches the bundle's
    ``onnx_sha256`` (and the shipped catalog's record, for a shipped bundle)."""
    if not bundle.config.onnx_sha256 or bundle.path is None:
        raise BundleError(f"{bundle._where()} has no ONNX network; run it with --backend torch")
    path = bundle.path / ONNX_FILE
    if not path.is_file():
        raise BundleError(f"{path} is missing; the bundle is incomplete: re-export or re-install it")
    _check_size(path, MAX_ONNX_BYTES)
    model = path.read_bytes()
    _check_digest(
        path, hashlib.sha256(model).hexdigest(), bundle.path, bundle.config.onnx_sha256, "onnx_sha256"
    )
    return model


def add_onnx_model(folder: str | os.PathLike, model: bytes) -> Path:
    """Give the bundle ``folder`` the ONNX network ``model`` (bytes of network.onnx), recording
    its sha256; atomic like :func:`save_bundle` (the weights are copied unchanged)."""
    folder = Path(folder)
    config = read_config(folder)
    with _staged(folder) as temp:
        shutil.copy2(folder / WEIGHTS_FILE, temp / WEIGHTS_FILE)
        (temp / ONNX_FILE).write_bytes(model)
        config.onnx_sha256 = hashlib.sha256(model).hexdigest()
        _write_config(temp, config)
    return folder


def _load_state_dict(stream, weights_path: Path) -> dict:
    """The state dict in ``stream`` (whose sha256 was checked)."""
    import torch  # only now: a refused file never costs the torch import

    stream.seek(0)
    try:
        state_dict = torch.load(stream, weights_only=True, map_location="cpu")
    except Exception as error:
        raise BundleError(
            f"{weights_path} cannot be read as PyTorch weights ({type(error).__name__}); "
            "it must be a plain state_dict saved with torch.save: re-export the bundle"
        ) from None
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) for k in state_dict):
        raise BundleError(
            f"{weights_path} does not hold a state_dict (a dict of tensors); re-export the bundle"
        )
    return state_dict


# --- catalogs -------------------------------------------------------------------------------


def user_models_dir() -> Path:
    """The user catalog folder: ``$POCKETSEG_MODELS_DIR`` or ``~/.pocketseg/models``."""
    configured = os.environ.get(MODELS_DIR_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".pocketseg" / "models"


@dataclass
class CatalogEntry:
    """One bundle a catalog offers."""

    name: str
    path: Path
    task: str | None
    title: str
    modality: str
    source: str  # "shipped" or "user"
    version: str = ""
    weights_sha256: str = ""  # shipped entries: the catalog's own record of the weights
    onnx_sha256: str = ""  # shipped entries with an ONNX network: the catalog's record of it

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        return data


def _shipped_entries() -> list[CatalogEntry]:
    if not SHIPPED_CATALOG.is_file():
        return []
    try:
        catalog = json.loads(SHIPPED_CATALOG.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BundleError(
            f"the shipped model catalog {SHIPPED_CATALOG} is unreadable ({error}); reinstall"
        ) from None
    entries = []
    for item in catalog.get("bundles", []):
        path = SHIPPED_CATALOG.parent / item["path"]
        entries.append(
            CatalogEntry(
                name=item["name"],
                path=path,
                task=item.get("task"),
                title=item.get("title", item["name"]),
                modality=item.get("modality", ""),
                source="shipped",
                version=str(item.get("version", "")),
                weights_sha256=str(item.get("weights_sha256", "")),
                onnx_sha256=str(item.get("onnx_sha256", "")),
            )
        )
    return entries


def _shipped_entry_at(folder: Path) -> CatalogEntry | None:
    """The shipped catalog entry whose bundle is ``folder``, if any."""
    resolved = folder.resolve()
    return next((e for e in _shipped_entries() if e.path.resolve() == resolved), None)


def _user_entries() -> list[CatalogEntry]:
    folder = user_models_dir()
    if not folder.is_dir():
        return []
    entries = []
    for child in sorted(folder.iterdir()):
        if child.name.startswith(".") or not (child / CONFIG_FILE).is_file():
            continue
        try:
            config = read_config(child)
        except BundleError:
            continue  # a broken user bundle must not hide the others; loading it by path says why
        entries.append(
            CatalogEntry(
                name=config.name,
                path=child,
                task=config.task,
                title=config.title or config.name,
                modality=config.modality,
                source="user",
                version=config.version,
            )
        )
    return entries


def list_bundles() -> list[CatalogEntry]:
    """Every bundle on offer: the shipped ones first, then the user's (newest registrations win names)."""
    return _shipped_entries() + _user_entries()


def register_bundle(path: str | os.PathLike, name: str | None = None) -> Path:
    """Copy a bundle into the user catalog (verifying it first) and return its new folder."""
    source = Path(path)
    if name is not None:
        check_bundle_name(name)
    bundle = load_bundle(source)  # refuses a corrupt bundle (and a bad name) before it enters the catalog
    target = user_models_dir() / check_bundle_name(name or bundle.config.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.resolve() == source.resolve():
        return target
    with _staged(target) as temp:
        shutil.copy2(source / CONFIG_FILE, temp / CONFIG_FILE)
        shutil.copy2(source / WEIGHTS_FILE, temp / WEIGHTS_FILE)
        if bundle.config.onnx_sha256:
            shutil.copy2(source / ONNX_FILE, temp / ONNX_FILE)
    return target


def resolve_bundle(name_or_path: str | os.PathLike) -> Path:
    """The folder of a bundle given a path, a catalog name, or a task alias."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return candidate
    if candidate.name == CONFIG_FILE and candidate.is_file():
        return candidate.parent
    text = str(name_or_path)
    entries = list_bundles()
    # A name is explicit: the user's bundle of that name wins. A task alias (the one-click
    # buttons) means the task's first shipped model (its default; the task's other shipped models
    # are chosen by name); a user's model of the task serves only when none is shipped, so
    # training a model never silently changes what the buttons do.
    for entry in reversed(entries):
        if entry.name == text:
            return entry.path
    for entry in entries:
        if entry.task == text:
            return entry.path
    if text in ("skullstrip", "liver"):
        raise BundleError(
            f"no model for task {text} is installed; train one with pocketseg train "
            f"(and register it) or pass --model PATH to a bundle folder"
        )
    if os.sep in text or text.startswith("."):
        raise BundleError(f"model bundle folder {text} does not exist")
    names = sorted({e.name for e in entries}) or ["(none installed)"]
    raise BundleError(
        f"unknown model '{text}': not a bundle folder nor a catalog name; available: {', '.join(names)}"
    )
