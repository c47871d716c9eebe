"""Load a decathlon-style datalist and check its files before training starts.

Every problem a user can fix (a missing file, a truncated volume, an image and label of different
sizes, a label with undeclared classes) raises :class:`~lightvessel_monai.errors.DataError` with a
one-line message naming the datalist, the entry index and the file, instead of failing deep inside a
data loader worker after the networks are built.

The readers are small and format-specific (``_formats``: Pillow for 2D images, nibabel for NIfTI, ITK where
MONAI's LoadImage would use it; ``_dicom_series``: pydicom headers) so that checking a datalist costs a fraction
of one epoch: images are opened and decoded (or, for NIfTI, checked for their full size) and labels are read to
check their values. This module loads the datalist and compares the files of each entry.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightvessel_monai.data._formats import ITK_2D_SUFFIXES, FileInfo, read_image, read_label, read_with_itk
from lightvessel_monai.data._unreadable import Unreadable, one_line
from lightvessel_monai.errors import ConfigKeyError, DataError

__all__ = ["load_datalist", "check_datalist", "checked_split", "count_outside"]

logger = logging.getLogger(__name__)

_MAX_LISTED = 5  # unexpected label values listed in a message

# --------------------------------------------------------------------------------------------- datalist


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def load_datalist(datalist_path: str, data_list_key: str = "training", base_dir: str | None = None) -> list[dict]:
    """Read ``data_list_key`` of a decathlon-style JSON datalist with :func:`monai.data.load_decathlon_datalist`.

    Relative paths are joined to ``base_dir`` (default: the folder of the datalist). A missing or
    invalid file, a missing key, or an empty or malformed list raises a one-line :class:`DataError`.
    """
    from monai.data import load_decathlon_datalist

    path = Path(datalist_path)
    name = os.fspath(datalist_path)
    if not path.exists():
        raise DataError(f"datalist {name} does not exist")
    if not path.is_file():
        raise DataError(f"datalist {name} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"datalist {name} cannot be read: {one_line(err)}") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(
            f"datalist {name} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    if not isinstance(content, dict):
        raise DataError(
            f"datalist {name} must be a JSON object with a '{data_list_key}' list, not a JSON {_json_type(content)}"
        )
    if data_list_key not in content:
        keys = list(content)
        listed = ", ".join(keys[:10]) + (", ..." if len(keys) > 10 else "") if keys else "none"
        raise DataError(f"datalist {name} has no key '{data_list_key}' (keys: {listed})")
    items = content[data_list_key]
    if not isinstance(items, list):
        raise DataError(
            f"datalist {name} key '{data_list_key}' must be a list of entries, not a JSON {_json_type(items)}"
        )
    if not items:
        raise DataError(f"datalist {name} key '{data_list_key}' is empty")
    # MONAI accepts a bare list of image paths under "test"; everywhere else entries are objects.
    bare_paths = data_list_key == "test" and not isinstance(items[0], dict)
    for index, item in enumerate(items):
        ok = isinstance(item, str) if bare_paths else isinstance(item, dict)
        if not ok:
            expected = "an image path" if bare_paths else 'an object such as {"image": ..., "label": ...}'
            raise DataError(
                f"datalist {name} key '{data_list_key}' entry {index} must be {expected}, not a JSON {_json_type(item)}"
            )
    try:
        return load_decathlon_datalist(path, data_list_key=data_list_key, base_dir=base_dir)
    except (ValueError, TypeError, OSError) as err:
        raise DataError(f"datalist {name} key '{data_list_key}' cannot be loaded: {one_line(err)}") from None


def _unexpected_values(array: np.ndarray, allowed: Sequence[int]) -> list[Any]:
    """The sorted values of ``array`` that are not in ``allowed`` (empty when the label is valid)."""
    if len(allowed) <= 16:  # one comparison per class is several times faster than np.isin
        ok = np.zeros_like(array, dtype=bool)  # same memory order as the array (NIfTI data is Fortran-ordered)
        for value in allowed:
            ok |= array == value
        bad_mask = ~ok
    else:
        bad_mask = ~np.isin(array, np.asarray(list(allowed)))
    if not bad_mask.any():
        return []
    values = np.unique(array[bad_mask])
    return [v.item() for v in values]


def _fmt_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _strip_singletons(shape: tuple[int, ...], keep: int) -> tuple[int, ...]:
    """``shape`` without its trailing singleton dims past the first ``keep`` ones."""
    while len(shape) > keep and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _same_shape(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Equal spatial shapes, ignoring trailing singleton dims past the second one ((64, 64, 1) == (64, 64))."""
    return _strip_singletons(a, 2) == _strip_singletons(b, 2)


def _fmt_vector(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _affine_difference(affine: np.ndarray, reference: np.ndarray, tol: float) -> str | None:
    """``None`` when the two affines agree within ``tol`` (mm), else a short description of the difference."""
    if affine.shape == reference.shape and np.allclose(affine, reference, rtol=0.0, atol=tol):
        return None
    if affine.shape != reference.shape:
        return f"shape {affine.shape} vs {reference.shape}"
    largest = float(np.max(np.abs(affine - reference)))
    parts = [f"largest difference {largest:.4g} mm (tolerance {tol:g} mm)"]
    origin, ref_origin = affine[:3, 3], reference[:3, 3]
    if not np.allclose(origin, ref_origin, rtol=0.0, atol=tol):
        parts.append(f"origin {_fmt_vector(origin)} vs {_fmt_vector(ref_origin)}")
    spacing, ref_spacing = np.linalg.norm(affine[:3, :3], axis=0), np.linalg.norm(reference[:3, :3], axis=0)
    if not np.allclose(spacing, ref_spacing, rtol=0.0, atol=tol):
        parts.append(f"spacing {_fmt_vector(spacing)} vs {_fmt_vector(ref_spacing)}")
    elif not np.allclose(affine[:3, :3], reference[:3, :3], rtol=0.0, atol=tol):
        parts.append("direction differs")
    return ", ".join(parts)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


# ------------------------------------------------------------------------------------------------- checks


def check_datalist(
    datalist: list[dict],
    keys: Sequence[str] = ("image", "label"),
    label_key: str | None = "label",
    label_values: Sequence[int] | None = (0, 1),
    source: str = "datalist",
    *,
    spatial_dims: int | None = None,
    affine_tol: float | None = 1e-3,
    optional_keys: Sequence[str] = ("fov",),
    image_channels: int | None = None,
    min_shape: Sequence[int] | None = None,
    reader: str | None = None,
) -> list[dict]:
    """Check that every entry's files exist, can be read, agree in spatial shape and hold declared labels.

    A DICOM folder must hold one series (one SeriesInstanceUID) whose slices are evenly spaced along the
    slice normal (no missing or duplicate slices); only the headers are read.

    Args:
        datalist: entries such as ``{"image": path, "label": path}``; a value may also be a list of paths
            (a multi-channel image), whose files must agree in shape.
        keys: the keys every entry must have, each naming one or more files. Spatial shapes are compared
            with that of the first file that has one (``keys[0]`` unless it is DICOM).
        label_key: the key (one of ``keys``) whose files are read to check their values, or ``None``.
        label_values: the classes a label may hold (e.g. ``(0, 1)``, or ``(0, 255)`` for PNG masks), or
            ``None`` to skip the value check.
        source: names the datalist in messages, e.g. ``"datalist /data/dataset.json key 'training'"``.
        spatial_dims: the number of dimensions every image and label must have (2 or 3), trailing
            singleton dims not counted; e.g. ``3`` rejects a 4D NIfTI ``(X, Y, Z, T)`` with ``T > 1``
            (and a 2D image). ``None`` skips the check.
        affine_tol: the largest difference (mm) allowed between the voxel-to-world affines of an entry's
            files (NIfTI), e.g. a label and its image; ``None`` skips the check.
        optional_keys: keys checked like ``keys`` (exist, readable, same spatial shape) in the entries that have
            them, e.g. ``"fov"``, a field-of-view mask (DRIVE); other extra keys are ignored.
        image_channels: the colour channels the ``keys[0]`` files of an entry must hold together, where the format
            tells (2D images: L 1, LA 2, RGB 3, RGBA 4), e.g. ``1`` rejects an RGBA PNG fed to a one-channel network;
            label files must always hold one channel. ``None`` skips the image check.
        min_shape: the smallest spatial size of the ``keys[0]`` files, compared on the leading ``len(min_shape)``
            dims, e.g. the training ``patch_size`` when no transform pads the image up to it. ``None`` skips it.
        reader: the ``reader`` of the pipeline's ``LoadImaged`` (``"PILReader"``, ...), or ``None`` when MONAI picks
            one by suffix; then TIFF and GIF files, which it reads with ITK, are also read with ITK here.

    Returns:
        ``datalist`` itself, unchanged.

    Raises:
        DataError: one line naming ``source``, the entry index and the file at fault.
    """
    keys = list(keys)
    if label_key is not None and label_key not in keys:
        raise ConfigKeyError(f"check_datalist label_key '{label_key}' is not one of keys {keys}")
    if not isinstance(datalist, Sequence) or isinstance(datalist, (str, bytes)):
        raise DataError(f"{source} must be a list of entries, not {type(datalist).__name__}")
    if len(datalist) == 0:
        raise DataError(f"{source} is empty")
    allowed = sorted(label_values) if label_values is not None else None
    # Files shared by entries (one image with several labels) are read once.
    infos: dict[str, FileInfo] = {}
    label_checked: set[str] = set()
    itk_checked: set[str] = set()

    for index, entry in enumerate(datalist):
        where = f"{source} entry {index}"
        if not isinstance(entry, dict):
            raise DataError(f"{where} must be a dict of file paths, not {type(entry).__name__}")
        missing = [k for k in keys if k not in entry]
        if missing:
            have = ", ".join(map(str, entry)) or "none"
            raise DataError(f"{where} has no key '{missing[0]}' (keys: {have})")

        reference: tuple[str, str, FileInfo] | None = None  # (key, file, info) of the first file with a shape
        for key in keys + [k for k in optional_keys if k in entry and k not in keys]:
            value = entry[key]
            paths = value if isinstance(value, (list, tuple)) else [value]
            if not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
                raise DataError(f"{where} key '{key}' must be a file path or a list of paths, not {value!r:.80}")
            for raw in paths:
                path = os.fspath(raw)
                what = f"{where}: {key} {path}"
                if not os.path.exists(path):
                    raise DataError(f"{what} does not exist")
                try:
                    if key == label_key and allowed is not None:
                        if path not in label_checked:
                            info, array = read_label(path)
                            if array is not None:
                                bad = _unexpected_values(array, allowed)
                                if bad:
                                    listed = ", ".join(_fmt_value(v) for v in bad[:_MAX_LISTED])
                                    more = f", ... ({len(bad)} in all)" if len(bad) > _MAX_LISTED else ""
                                    raise DataError(
                                        f"{what} has values {{{listed}{more}}} outside the declared classes "
                                        f"[{', '.join(_fmt_value(v) for v in allowed)}]"
                                    )
                            infos[path] = info
                            label_checked.add(path)
                    elif path not in infos:
                        infos[path] = read_image(path)
                    if reader is None and path.lower().endswith(ITK_2D_SUFFIXES) and path not in itk_checked:
                        read_with_itk(path)
                        itk_checked.add(path)
                except Unreadable as err:
                    raise DataError(f"{what} {err}") from None
                except OSError as err:  # e.g. permission denied, a folder where a file was expected
                    raise DataError(f"{what} cannot be read ({one_line(err)})") from None
                info = infos[path]
                if key == label_key and info.channels not in (None, 1):
                    raise DataError(f"{what} has {info.channels} channels; a label must hold one channel of classes")
                if key == keys[0] and min_shape is not None and info.shape is not None:
                    # leading dims only: a 2D patch over an (X, Y, C) NIfTI (LVSD300's 2.5D slabs) skips C
                    pairs = zip(info.shape, min_shape, strict=False)
                    small = [d for d, (have, need) in enumerate(pairs) if have < need]
                    if small:
                        raise DataError(
                            f"{what} has spatial shape {_fmt_shape(info.shape)}, smaller than the training patch "
                            f"{_fmt_shape(tuple(min_shape))} in dim {small[0]}: lower patch_size or use larger images"
                        )
                if spatial_dims is not None and info.full_shape is not None:
                    dims = _strip_singletons(info.full_shape, spatial_dims)
                    if len(dims) != spatial_dims:
                        raise DataError(
                            f"{what} has {len(dims)} dimensions {_fmt_shape(info.full_shape)} where {spatial_dims} "
                            "spatial dimensions are expected"
                        )
                if info.shape is None:
                    continue
                if reference is None:
                    reference = (key, path, info)
                    continue
                ref_key, ref_path, ref_info = reference
                assert ref_info.shape is not None
                if not _same_shape(ref_info.shape, info.shape):
                    raise DataError(
                        f"{what} has spatial shape {_fmt_shape(info.shape)} but {ref_key} {ref_path} "
                        f"has {_fmt_shape(ref_info.shape)}"
                    )
                if affine_tol is not None and info.affine is not None and ref_info.affine is not None:
                    problem = _affine_difference(info.affine, ref_info.affine, affine_tol)
                    if problem:
                        raise DataError(f"{what} has a different affine than {ref_key} {ref_path}: {problem}")
            if key == keys[0] and image_channels is not None:
                counts = [infos[os.fspath(p)].channels for p in paths]
                if None not in counts and sum(counts) != image_channels:
                    split = f" ({' + '.join(map(str, counts))} over its files)" if len(counts) > 1 else ""
                    raise DataError(
                        f"{where}: {key} {os.fspath(paths[0])} has {sum(counts)} channels{split} where "
                        f"{image_channels} are expected (image_channels, which defaults to in_channels)"
                    )
    return datalist


def checked_split(datalist_file: str, split: str, **kwargs: Any) -> list[dict]:
    """One split (``"training"``, ``"validation"``) of an MSD-style datalist, read and checked:
    :func:`check_datalist` of :func:`load_datalist`, with ``datalist_file`` named in the errors; ``kwargs`` go to
    :func:`check_datalist`."""
    return check_datalist(load_datalist(datalist_file, split), source=datalist_file, **kwargs)


def count_outside(datalist: Sequence[dict], folder: str | os.PathLike, keys: Sequence[str] = ("image", "label")) -> int:
    """Log, and return, how many datalist entries name a file outside ``folder`` (the configured ``dataset_dir``).

    Datalists may point anywhere (real-data overlays read ``../shared/data`` in place, MSD datalists often hold
    absolute paths), so this is not an error; the pre-flight summary says it, so that a user sees where data is read.
    """
    root = Path(folder).resolve()
    outside = 0
    for entry in datalist:
        paths = [entry[k] for k in keys if isinstance(entry, dict) and isinstance(entry.get(k), (str, os.PathLike))]
        if any(not Path(p).resolve().is_relative_to(root) for p in paths):
            outside += 1
    logger.info(f"pre-flight: {len(datalist)} entries checked, {outside} of them read from outside {root}")
    return outside
