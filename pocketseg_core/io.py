"""Reading and writing 3D images with SimpleITK, atomic writes, and input validation.

Every image PocketSeg touches enters through :func:`read_image` and leaves through
:func:`write_image`. Geometry (size, spacing, origin, direction) always travels with the
``SimpleITK.Image``; arrays taken from it are ``(z, y, x)``.

Checks happen where the problem can be named best:

- :func:`read_image` refuses what can never be a volume: a missing or unreadable file, a
  pipe or device instead of a file, a 2D image or a single slice, a 4D image with more than
  one volume, a vector image, zero voxels, NaN or infinite voxels, a grid with an unusable
  spacing or a sheared direction (:func:`pocketseg_core.geometry.check_geometry`). Before
  any voxel is read, the header is checked against the file (:func:`check_image_file`): a
  truncated file, or a header claiming more voxels than the file or the memory can hold, is
  refused without allocating them; NIfTI voxels are scanned for NaN/infinity in the file,
  because ITK's NIfTI reader silently turns them into 0.
- :func:`check_image_content` is what inference calls on top: it additionally refuses a
  constant image (nothing to segment). Label files may legitimately be all zero (an empty
  reference), so reading does not refuse constant images.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import stat
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pocketseg_core.errors import GridMismatchError, ImageWriteError, InputImageError, PocketSegError
from pocketseg_core.geometry import check_geometry, geometry_problem

logger = logging.getLogger(__name__)

#: file name endings PocketSeg reads and writes (DICOM is read as a folder of slices)
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: endings of detached-header formats whose header names a separate data file
_DETACHED_HEADER_EXTENSIONS = (".nhdr", ".mhd")

#: most voxels an input may have (a 1024x1024x2048 CT is 2**31); more is a lying header
MAX_INPUT_VOXELS = 2**32

#: deflate (gzip, zlib: .nii.gz, compressed NRRD and MHA) never compresses by more than
#: 1032:1, so a header claiming more data than this times the file size is impossible
_DEFLATE_MAX_RATIO = 1100

#: NIfTI datatype codes of real floating-point voxels -> numpy type (without byte order)
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}
_SCAN_BLOCK = 1 << 22


def itk_path(path: str | os.PathLike) -> str:
    """``path`` as a string ITK can open, whatever the locale.

    Under an ASCII locale (``LANG=C`` without UTF-8 mode, as in some Slicer or cron setups)
    Python keeps the undecodable bytes of a non-ASCII file name as surrogates, which SimpleITK
    cannot encode (the process aborts). The original bytes are recovered and decoded as UTF-8,
    which is what SimpleITK passes to the file system.

    Raises:
        InputImageError: the name is not valid UTF-8 either (rename the file).
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(text).decode("utf-8")
    except UnicodeDecodeError:
        raise InputImageError(
            f"{text.encode('ascii', 'replace').decode()}: the file name is neither ASCII nor UTF-8, so "
            f"it cannot be opened by the image library; rename the file (or its folder)."
        ) from None


def image_extension(path: str | os.PathLike) -> str:
    """The image-format ending of ``path`` (``.nii.gz`` counts as one), lower case, or ``""``."""
    name = Path(path).name.lower()
    for extension in IMAGE_EXTENSIONS:
        if name.endswith(extension):
            return extension
    return ""


def strip_image_extension(path: str | os.PathLike) -> str:
    """The file name of ``path`` without its image ending: ``case_01.nii.gz`` -> ``case_01``."""
    name = Path(path).name
    extension = image_extension(name)
    return name[: len(name) - len(extension)] if extension else name


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a regular file whose name ends in one of :data:`IMAGE_EXTENSIONS`."""
    return Path(path).is_file() and bool(image_extension(path))


def describe_image(image: sitk.Image) -> str:
    """One line with size, spacing and pixel type, for messages: ``240x193x180 at 1x1x1 mm, uint8``."""
    size = "x".join(str(s) for s in image.GetSize())
    spacing = "x".join(f"{s:g}" for s in image.GetSpacing())
    return f"{size} at {spacing} mm, {image.GetPixelIDTypeAsString()}"


# --------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D scalar image from a file or a DICOM series folder.

    Args:
        path: a ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd`` file, or a folder
            holding a DICOM series (the largest series is read when there are several).

    Returns:
        The image, 3D, one component per voxel, geometry as stored in the file. A 4D image
        holding a single volume is squeezed to 3D (its 3D geometry kept).

    Raises:
        InputImageError: missing or unreadable, 2D or a single slice, 4D with several volumes,
            a vector/multi-component image, zero voxels, NaN or infinite voxels.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"{path}: no such file or folder. Check the path.")
    if path.is_dir():
        image = _read_dicom_folder(path)
    else:
        with tempfile.TemporaryDirectory(prefix="pocketseg-read-") as scratch:
            # A .nii.gz is decompressed once: the check streams it into an uncompressed copy,
            # which ITK then reads (decompressing it twice cost 0.3-0.9 s per head).
            copy = Path(scratch) / "image.nii"
            check_image_file(path, decompressed_copy=copy)
            try:
                image = sitk.ReadImage(itk_path(copy if copy.exists() else path))
            except RuntimeError as error:
                raise InputImageError(
                    f"{path}: cannot be read as an image ({_first_line(error)}). "
                    f"PocketSeg reads NIfTI, NRRD, MHA/MHD files and DICOM series folders."
                ) from error
    image = _as_3d_scalar(image, path)
    check_geometry(image, str(path))
    _check_finite_and_nonempty(image, str(path))
    return image


def check_image_file(path: str | os.PathLike, decompressed_copy: Path | None = None) -> None:
    """Check an image file against its own header before any voxel is read.

    Refuses, each with one sentence: a pipe, device or socket (reading one would block); a
    header ITK cannot read; more voxels than :data:`MAX_INPUT_VOXELS` or than the machine's
    memory holds; an unusable grid (spacing, origin, direction); data shorter than the header
    says (an uncompressed file, or a deflate-compressed one that could not hold that much);
    and for NIfTI (``.nii``/``.nii.gz``) a truncated or corrupt file or NaN/infinite voxels,
    found by streaming through the file (never holding more than a few MB).

    ``decompressed_copy``: where a ``.nii.gz`` that passes is also written uncompressed (the
    stream is decompressed once, for the check and for ITK's read of the copy); left absent
    when there is nothing to decompress or no room to write it.

    Raises:
        InputImageError: the file cannot be a usable image.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise InputImageError(f"{path}: cannot be opened ({error.strerror or error}).") from None
    if not stat.S_ISREG(mode):
        raise InputImageError(
            f"{path}: is not a regular file (a pipe, device or socket); save the image to a file first."
        )
    reader = sitk.ImageFileReader()
    reader.SetFileName(itk_path(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputImageError(
            f"{path}: cannot be read as an image ({_first_line(error)}). "
            f"PocketSeg reads NIfTI, NRRD, MHA/MHD files and DICOM series folders."
        ) from error
    size = [int(s) for s in reader.GetSize()]
    voxels = float(np.prod(size, dtype=float))
    shape = "x".join(str(s) for s in size)
    if voxels > MAX_INPUT_VOXELS:
        raise InputImageError(
            f"{path}: the header claims {shape} = {voxels:.3g} voxels, more than PocketSeg reads "
            f"({MAX_INPUT_VOXELS:.3g}); the header is wrong or the image must be cropped first."
        )
    data_bytes = voxels * reader.GetNumberOfComponents() * _bytes_per_component(reader.GetPixelID())
    memory = _physical_memory()
    if memory is not None and data_bytes > memory:
        raise InputImageError(
            f"{path}: the header claims {shape} voxels ({data_bytes / 2**30:.1f} GiB), more than this "
            f"machine's memory ({memory / 2**30:.1f} GiB); the header is wrong or the image must be cropped."
        )
    dim = len(size)
    problem = (
        geometry_problem(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()) if dim >= 2 else ""
    )
    if problem and dim in (2, 3):
        raise InputImageError(
            f"{path}: {problem}. Fix the header (spacing, origin, direction) or re-export the image."
        )
    extension = image_extension(path)
    if extension in (".nii", ".nii.gz"):
        _scan_nifti(path, decompressed_copy)
    elif extension not in _DETACHED_HEADER_EXTENSIONS:
        file_size = path.stat().st_size
        if data_bytes > file_size * _DEFLATE_MAX_RATIO:
            raise InputImageError(
                f"{path}: the header claims {shape} voxels ({data_bytes / 2**20:.0f} MiB) but the file "
                f"has only {file_size} bytes; it is truncated or its header is wrong."
            )


def _bytes_per_component(pixel_id: int) -> int:
    """Bytes of one component of ``pixel_id`` (a SimpleITK pixel type), 8 when unknown."""
    sizes = {
        sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2,
        sitk.sitkUInt32: 4, sitk.sitkInt32: 4, sitk.sitkFloat32: 4,
        sitk.sitkVectorUInt8: 1, sitk.sitkVectorInt8: 1, sitk.sitkVectorUInt16: 2, sitk.sitkVectorInt16: 2,
        sitk.sitkVectorUInt32: 4, sitk.sitkVectorInt32: 4, sitk.sitkVectorFloat32: 4,
    }  # fmt: skip
    return sizes.get(pixel_id, 8)


def _physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _scan_nifti(path: Path, decompressed_copy: Path | None = None) -> None:
    """Stream through a NIfTI-1/2 file: the data the header promises must all be there, and
    floating-point voxels must be finite (ITK's reader would turn NaN into 0 silently). A
    compressed file is also written, uncompressed, to ``decompressed_copy`` when given (header
    and extensions as they are, then the voxels); the copy is removed when the check fails."""
    bad = 0
    carry = b""
    copy = None
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
        with (gzip.open if compressed else open)(path, "rb") as stream, contextlib.ExitStack() as closing:
            head = stream.read(540)
            layout = _nifti_layout(head)
            if layout is None:
                return  # not a NIfTI header ITK would read either; ReadImage says why
            offset, data_bytes, float_type = layout
            if compressed and decompressed_copy is not None:
                copy = _open_copy(decompressed_copy, closing)
            if not compressed and not float_type:
                remaining = max(0, offset + data_bytes - path.stat().st_size)
            else:
                if copy is not None:
                    head += stream.read(max(0, offset - len(head)))
                    copy.write(head[:offset])
                    if len(head) > offset:  # a 348-byte header with its data right behind it
                        stream.seek(offset)
                else:
                    stream.seek(offset)  # a gzip stream seeks by decompressing: nothing is kept
                remaining = data_bytes
                itemsize = np.dtype(float_type).itemsize if float_type else 1
                while remaining > 0:
                    block = stream.read(min(_SCAN_BLOCK, remaining))
                    if not block:
                        break
                    remaining -= len(block)
                    if copy is not None:
                        copy = _write_copy(copy, block, decompressed_copy)
                    if float_type:
                        data = carry + block
                        usable = len(data) - len(data) % itemsize
                        values = np.frombuffer(data[:usable], dtype=float_type)
                        bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                        carry = data[usable:]
    except (OSError, EOFError, zlib.error) as error:
        _remove_copy(decompressed_copy)
        raise InputImageError(
            f"{path}: the file is truncated or corrupt ({error}); re-export or download it again."
        ) from None
    if remaining > 0 or bad:
        _remove_copy(decompressed_copy)
    if remaining > 0:
        raise InputImageError(
            f"{path}: the file is truncated: its header promises {data_bytes} bytes of voxels, "
            f"{data_bytes - remaining} are there. Re-export or download it again."
        )
    if bad:
        raise InputImageError(
            f"{path}: has {bad} NaN or infinite voxel(s); PocketSeg needs finite values. "
            f"Fix the export, or replace them (e.g. by 0) before segmenting."
        )


def _open_copy(target: Path, closing: contextlib.ExitStack):
    """``target`` opened for the decompressed copy, or None where it cannot be written (the
    image is then read from the compressed file, as before)."""
    try:
        return closing.enter_context(open(target, "wb"))
    except OSError:
        return None


def _write_copy(copy, block: bytes, target: Path):
    """Append ``block`` to the decompressed copy; a full disk gives up the copy, not the read."""
    try:
        copy.write(block)
    except OSError:
        copy.close()
        _remove_copy(target)
        return None
    return copy


def _remove_copy(target: Path | None) -> None:
    if target is not None:
        with contextlib.suppress(OSError):
            target.unlink()


def _nifti_layout(header: bytes) -> tuple[int, int, str] | None:
    """(data offset, data bytes, numpy float type or "") from a NIfTI-1 or NIfTI-2 header."""
    for order in ("<", ">"):
        if len(header) >= 348 and np.frombuffer(header[:4], order + "i4")[0] == 348:
            dims = np.frombuffer(header[40:56], order + "i2").astype(np.int64)
            datatype = int(np.frombuffer(header[70:72], order + "i2")[0])
            bitpix = int(np.frombuffer(header[72:74], order + "i2")[0])
            offset = int(np.frombuffer(header[108:112], order + "f4")[0])
            break
        if len(header) >= 540 and np.frombuffer(header[:4], order + "i4")[0] == 540:
            datatype = int(np.frombuffer(header[12:14], order + "i2")[0])
            bitpix = int(np.frombuffer(header[14:16], order + "i2")[0])
            dims = np.frombuffer(header[16:80], order + "i8")
            offset = int(np.frombuffer(header[168:176], order + "i8")[0])
            break
    else:
        return None
    rank = int(dims[0])
    if not 1 <= rank <= 7 or bitpix <= 0:
        return None
    voxels = int(np.prod([max(int(d), 1) for d in dims[1 : rank + 1]], dtype=object))
    float_type = order + _NIFTI_FLOAT_TYPES[datatype] if datatype in _NIFTI_FLOAT_TYPES else ""
    return max(offset, 348), voxels * bitpix // 8, float_type


def check_image_content(image: sitk.Image, name: str = "image", allow_constant: bool = False) -> None:
    """Refuse an image that cannot be segmented meaningfully.

    Args:
        image: the image to check (any dimension).
        name: what to call it in the message (a file name, "input image", ...).
        allow_constant: accept an image whose voxels all have one value (true for label
            maps, where an empty reference is a legitimate case).

    Raises:
        InputImageError: zero voxels, NaN or infinite voxels, an unusable grid (spacing,
            sheared direction), or (unless allowed) a constant image.
    """
    _check_finite_and_nonempty(image, name)
    if image.GetDimension() in (2, 3):
        check_geometry(image, name)
    if allow_constant:
        return
    values = sitk.GetArrayViewFromImage(image)
    low, high = float(values.min()), float(values.max())
    if low == high:
        raise InputImageError(
            f"{name}: every voxel has the value {low:g}, so there is nothing to segment. "
            f"Check that the right file was chosen and that it was exported correctly."
        )


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """The largest DICOM series in ``folder`` (sorted by slice position by GDCM)."""
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(itk_path(folder))
    except RuntimeError as error:
        raise InputImageError(f"{folder}: cannot list DICOM series ({_first_line(error)}).") from error
    if not series_ids:
        raise InputImageError(
            f"{folder}: is a folder without a DICOM series. Give an image file "
            f"({', '.join(IMAGE_EXTENSIONS)}) or a folder of DICOM slices."
        )
    files_per_series = {
        series_id: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(itk_path(folder), series_id)
        for series_id in series_ids
    }
    chosen = max(series_ids, key=lambda series_id: len(files_per_series[series_id]))
    if len(series_ids) > 1:
        counts = ", ".join(f"{sid} ({len(files_per_series[sid])} files)" for sid in series_ids)
        logger.warning(
            "%s holds %d DICOM series: %s; reading the largest, %s.", folder, len(series_ids), counts, chosen
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_per_series[chosen])
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputImageError(
            f"{folder}: the DICOM series {chosen} cannot be read ({_first_line(error)})."
        ) from error


def _as_3d_scalar(image: sitk.Image, path: Path) -> sitk.Image:
    """Squeeze a single-volume 4D image; refuse 2D, single slices, 4D series and vector images."""
    size = image.GetSize()
    shape = "x".join(str(s) for s in size)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            f"(a vector or colour image, {shape}); PocketSeg needs a 3D scalar (grey-value) volume."
        )
    dimension = image.GetDimension()
    if dimension == 2:
        raise InputImageError(f"{path}: is a 2D image ({shape}); PocketSeg needs a 3D volume.")
    if dimension == 4:
        if size[3] != 1:
            raise InputImageError(
                f"{path}: is a 4D image ({shape}) with {size[3]} volumes; PocketSeg needs a single "
                f"3D volume. Extract the volume you want (e.g. the first time point) and save it."
            )
        try:
            # Extract with a zero size along the 4th axis collapses it, keeping 3D geometry.
            image = sitk.Extract(image, [size[0], size[1], size[2], 0], [0, 0, 0, 0])
        except RuntimeError as error:
            raise InputImageError(
                f"{path}: is a 4D image ({shape}) whose single volume cannot be extracted "
                f"({_first_line(error)}); save it as a 3D volume."
            ) from error
        size = image.GetSize()
    elif dimension != 3:
        raise InputImageError(f"{path}: is a {dimension}D image ({shape}); PocketSeg needs a 3D volume.")
    if 0 < min(size) < 2:
        raise InputImageError(
            f"{path}: is a single slice ({shape}); PocketSeg needs a 3D volume with several slices."
        )
    return image


def _check_finite_and_nonempty(image: sitk.Image, name: str) -> None:
    if image.GetNumberOfPixels() == 0:
        shape = "x".join(str(s) for s in image.GetSize())
        raise InputImageError(f"{name}: has no voxels (size {shape}); the file is empty or truncated.")
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise InputImageError(
                f"{name}: has {bad} NaN or infinite voxel(s); PocketSeg needs finite values. "
                f"Fix the export, or replace them (e.g. by 0) before segmenting."
            )


def _first_line(error: BaseException) -> str:
    """The informative part of a (multi-line) ITK exception message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "description" in line.lower() or "error" in line.lower():
            return line
    return lines[-1] if lines else type(error).__name__


# --------------------------------------------------------------------------- writing


def current_umask() -> int:
    """The process's umask (new files get ``0o666 & ~umask``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS, Windows): read it by setting it back at once
    os.umask(mask)
    return mask


def give_default_permissions(path: str | os.PathLike, folder: bool = False) -> None:
    """Give a file made by ``tempfile`` (always 0600, folders 0700) the permissions an ordinary
    ``open()`` or ``mkdir()`` would: ``0o666`` (folders ``0o777``) less the user's umask, so
    a file replaced atomically keeps the access others had to the one it replaces."""
    with contextlib.suppress(OSError, NotImplementedError):
        os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically: a reader sees the old file or the new one, never half.

    SimpleITK picks the writer from the ending, so the data is first written with the final
    ending into a hidden temporary folder beside the target (same file system), then moved
    into place with ``os.replace``. Detached-header formats (``.mhd``, ``.nhdr``) move their
    data file first and the header last.

    Args:
        image: the image to write.
        path: target file; the ending chooses the format (see :data:`IMAGE_EXTENSIONS`).
        compress: compress the voxel data (lossless; small and fast for masks).

    Returns:
        The target path.

    Raises:
        ImageWriteError: unknown ending, missing or read-only folder, or any write failure;
            nothing is left behind then.
    """
    target = Path(path)
    extension = image_extension(target)
    if not extension:
        raise ImageWriteError(
            f"{target}: unknown image ending; use one of {', '.join(IMAGE_EXTENSIONS)} (e.g. mask.nii.gz)."
        )
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ImageWriteError(
            f"{target}: cannot write, the folder {folder} does not exist (or is not a folder). "
            f"Create it or choose another output path."
        )
    if target.is_dir():
        raise ImageWriteError(f"{target}: is a folder; give a file name such as {target / 'mask.nii.gz'}.")
    try:
        temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=folder))
    except OSError as error:
        raise ImageWriteError(
            f"{target}: cannot write into {folder} ({error.strerror or error}). "
            f"Choose a folder you can write to."
        ) from error
    try:
        staged = temporary / target.name
        try:
            sitk.WriteImage(image, itk_path(staged), compress)
        except RuntimeError as error:
            raise ImageWriteError(f"{target}: writing failed ({_first_line(error)}).") from error
        produced = sorted(temporary.iterdir(), key=lambda p: p.name == target.name)  # header last
        if extension in _DETACHED_HEADER_EXTENSIONS or len(produced) == 1:
            for file in produced:
                os.replace(file, folder / file.name)
        else:  # pragma: no cover - a single-file format that produced several files
            raise ImageWriteError(f"{target}: the writer produced unexpected files {produced}.")
    except OSError as error:
        raise ImageWriteError(
            f"{target}: writing failed ({error.strerror or error}). Check free space and permissions."
        ) from error
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- arrays


def image_to_array(image: sitk.Image) -> np.ndarray:
    """A copy of the voxels as an array of shape ``(z, y, x)`` (SimpleITK's order)."""
    return sitk.GetArrayFromImage(image)


def image_from_array(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """An image holding ``array`` (shape ``(z, y, x)``) on exactly the grid of ``reference``.

    Raises:
        GridMismatchError: the array shape is not the reference's size reversed.
    """
    expected = tuple(reversed(reference.GetSize()))
    if tuple(array.shape) != expected:
        raise GridMismatchError(
            f"array of shape {tuple(array.shape)} does not fit the reference grid "
            f"{describe_image(reference)} (expected array shape {expected}, i.e. (z, y, x))."
        )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
    image.CopyInformation(reference)
    return image


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, flushed to
    disk, then ``os.replace``; on failure the previous file, if any, is untouched and no
    temporary file is left. The one atomic file write of the package (run files, checkpoints,
    tables, catalogs).

    Raises:
        PocketSegError: the file cannot be written (missing or read-only folder, disk full).
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise PocketSegError(f"{target}: cannot write ({error.strerror or error}).") from error
    give_default_permissions(temporary)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise PocketSegError(
            f"{target}: cannot write ({error.strerror or error}); the previous version, if any, was kept."
        ) from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, line endings as given) to ``path`` atomically (:func:`write_bytes_atomic`).

    Raises:
        PocketSegError: the file cannot be written (missing or read-only folder, disk full).
    """
    # surrogateescape: a file name kept as undecodable bytes under an ASCII locale is written
    # back as those (UTF-8) bytes instead of failing
    return write_bytes_atomic(path, text.encode("utf-8", "surrogateescape"))
