"""Fuzzed input for pre-flight: random, truncated and corrupted files and datalists end in acceptance or one line.

Every case ends one of two ways: the input is accepted, and then the bundle's own reader (MONAI's ``LoadImage``)
reads it, with finite voxels and declared label values; or it is refused with a one-line
:class:`~lightvessel_monai.errors.LightVesselError` that names the file or key. Anything else (another exception, a
traceback, a case running past its time bound) fails the test. DICOM is checked by its headers only (pre-flight
does not decode the pixels of a series), so for DICOM only the "one line, never a traceback" half is asserted.

The profile ``ci`` (the default) runs a bounded number of examples with a fixed seed, so a failure reproduces;
``HYPOTHESIS_PROFILE=long`` runs many more with fresh seeds. ``FUZZ_STATS=<file>`` appends a JSON line of counts
per case kind (tried, accepted, rejected) when the module finishes.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import os
import signal
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from monai.transforms import LoadImage
from PIL import Image

from lightvessel_monai.data.checks import check_datalist, load_datalist
from lightvessel_monai.data.dicom import write_dicom_series
from lightvessel_monai.errors import LightVesselError

settings.register_profile(
    "ci", max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
settings.register_profile("long", max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CASE_SECONDS = 20  # a case that runs longer is a hang
STATS: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_stats():
    yield
    target = os.environ.get("FUZZ_STATS")
    if target:
        with open(target, "a") as f:
            f.write(json.dumps({"profile": settings().max_examples, **dict(sorted(STATS.items()))}) + "\n")


@contextlib.contextmanager
def _time_bound(seconds: int = CASE_SECONDS):
    def _hang(signum, frame):
        raise AssertionError(f"case ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------- valid files

SHAPE_2D, SHAPE_3D = (24, 20), (12, 10, 6)


def _mask(shape, high):
    mask = np.zeros(shape, np.uint8)
    mask[tuple(slice(s // 4, s // 2) for s in shape)] = high
    return mask


def _valid_files(root: Path) -> dict[str, tuple[str, str, dict]]:
    """kind -> (the file to corrupt, its valid partner, check_datalist keyword arguments)."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, SHAPE_2D, dtype=np.uint8)
    volume = rng.standard_normal(SHAPE_3D).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)

    def save_pil(name, array):
        Image.fromarray(array).save(root / name, optimize=False)  # a GIF keeps its grey palette: it reads as L
        return str(root / name)

    def save_nifti(name, array):
        nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.5, 1.0])), str(root / name))
        return str(root / name)

    png_image, png_label = save_pil("image.png", grey), save_pil("label.png", _mask(SHAPE_2D, 255))
    tif_image, gif_label = save_pil("image.tif", grey), save_pil("label.gif", _mask(SHAPE_2D, 255))
    nii_image, nii_label = save_nifti("image.nii", volume), save_nifti("label.nii", _mask(SHAPE_3D, 1))
    gz_image, gz_label = save_nifti("image.nii.gz", volume), save_nifti("label.nii.gz", _mask(SHAPE_3D, 1))
    series = write_dicom_series(np.round(volume * 100).astype(np.int16), root / "series")
    args_2d = {"label_values": [0, 255], "spatial_dims": 2, "image_channels": 1}
    args_3d = {"label_values": [0, 1], "spatial_dims": 3}
    return {
        "png_image": (png_image, png_label, args_2d),
        "png_label": (png_label, png_image, args_2d),
        "tif_image": (tif_image, png_label, args_2d),
        "gif_label": (gif_label, png_image, {**args_2d, "reader": "PILReader"}),  # ITK reads no GIF: DRIVE's way
        "nii_image": (nii_image, nii_label, args_3d),
        "nii_label": (nii_label, nii_image, args_3d),
        "niigz_image": (gz_image, gz_label, args_3d),
        "niigz_label": (gz_label, gz_image, args_3d),
        "dicom_slice": (series[len(series) // 2], gz_label, args_3d),
    }


FILES_ROOT = Path(tempfile.mkdtemp(prefix="lightvessel_fuzz_"))
VALID = _valid_files(FILES_ROOT / "valid")

# a mutation of a file's bytes: none (the valid file), cut it, overwrite some bytes (anywhere, or in the first 352,
# where the headers of PNG, TIFF, GIF and NIfTI live), or replace it with random bytes
MUTATIONS = st.one_of(
    st.just(("keep", None)),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0, exclude_max=True)),
    st.tuples(
        st.just("overwrite"),
        st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    ),
    st.tuples(st.just("header"), st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("random"), st.binary(min_size=1, max_size=4096)),
)


def _mutate(data: bytes, mutation) -> bytes:
    kind, arg = mutation
    if kind == "keep":
        return data
    if kind == "truncate":
        return data[: int(arg * len(data))]
    if kind == "random":
        return arg
    out = bytearray(data)
    for where, value in arg:
        index = int(where * len(out)) if kind == "overwrite" else where
        if index < len(out):
            out[index] = value
    return bytes(out)


def _gz_inner(path: str, mutation) -> bytes:
    """A .nii.gz whose *decompressed* NIfTI is corrupted and recompressed: the gzip layer alone hides the header."""
    with gzip.open(path, "rb") as f:
        return gzip.compress(_mutate(f.read(), mutation))


def _check_outcome(kind: str, corrupted: str, entry: dict, args: dict, valid: bool) -> None:
    try:
        with _time_bound():
            check_datalist([entry], **args)
    except LightVesselError as err:
        assert not valid, f"the valid {kind} file was refused: {err}"
        message = str(err)
        assert "\n" not in message and len(message) < 600, message
        named = corrupted if not kind.startswith("dicom") else os.path.dirname(corrupted)
        assert named in message, f"the error does not name the file: {message}"
        STATS[f"{kind}:rejected"] += 1
        return
    STATS[f"{kind}:accepted"] += 1
    if kind.startswith("dicom"):
        return  # headers only, see the module docstring
    with _time_bound():
        array = np.asarray(LoadImage(reader=args.get("reader"), image_only=True)(corrupted))
    assert np.isfinite(array).all(), f"accepted {kind} holds NaN or infinite voxels"
    if kind.endswith("label"):
        assert set(np.unique(array).tolist()) <= set(args["label_values"]), "accepted label has undeclared values"


@pytest.mark.parametrize("kind", list(VALID))
@settings(suppress_health_check=list(HealthCheck))
@given(mutation=MUTATIONS, inner=st.booleans())
@example(mutation=("keep", None), inner=False)
def test_corrupted_files_are_accepted_only_when_readable(kind, mutation, inner):
    source, partner, args = VALID[kind]
    STATS[f"{kind}:tried"] += 1
    workdir = Path(tempfile.mkdtemp(dir=FILES_ROOT))
    if kind.startswith("dicom"):  # one slice of a series folder: the folder is the image
        folder = workdir / "series"
        folder.mkdir()
        for name in os.listdir(os.path.dirname(source)):
            (folder / name).write_bytes((Path(source).parent / name).read_bytes())
        corrupted = str(folder / os.path.basename(source))
        Path(corrupted).write_bytes(_mutate(Path(source).read_bytes(), mutation))
        entry = {"image": str(folder), "label": partner}
    else:
        corrupted = str(workdir / os.path.basename(source))
        data = _gz_inner(source, mutation) if inner and source.endswith(".gz") else None
        Path(corrupted).write_bytes(data if data is not None else _mutate(Path(source).read_bytes(), mutation))
        role = "label" if kind.endswith("label") else "image"
        entry = {role: corrupted, ("image" if role == "label" else "label"): partner}
    _check_outcome(kind, corrupted, entry, args, valid=mutation[0] == "keep" and not inner)


# ------------------------------------------------------------------------------------------------ datalists

JSON_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
ANY_JSON = st.recursive(
    JSON_LEAVES, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4)
)
PATHS = st.one_of(
    st.sampled_from(["IMAGE", "LABEL", "/etc/passwd", "../../etc/passwd", "missing.png", "", ".", "/", "sub/../x.png"]),
    st.text(max_size=30),
    st.just("\udcff\udcfe.png"),  # a non-UTF-8 file name, as Python decodes one (surrogate escapes)
)
ENTRIES = st.one_of(
    st.fixed_dictionaries({"image": PATHS, "label": PATHS}),
    st.fixed_dictionaries({"image": PATHS}),
    st.dictionaries(st.sampled_from(["image", "label", "fov", "other"]), PATHS | ANY_JSON, max_size=4),
    ANY_JSON,
)
DATALISTS = st.one_of(
    st.fixed_dictionaries({"training": st.lists(ENTRIES, max_size=6)}),
    st.fixed_dictionaries({"training": ANY_JSON}),
    ANY_JSON,
    st.fixed_dictionaries(
        {"training": st.lists(st.just({"image": "IMAGE", "label": "LABEL"}), min_size=300, max_size=400)}
    ),
)


def _substitute(value, image: str, label: str):
    if isinstance(value, str):
        return {"IMAGE": image, "LABEL": label}.get(value, value)
    if isinstance(value, list):
        return [_substitute(v, image, label) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, image, label) for k, v in value.items()}
    return value


@settings(suppress_health_check=list(HealthCheck))
@given(content=DATALISTS, raw_bytes=st.one_of(st.none(), st.binary(max_size=64)))
@example(content={"training": [{"image": "IMAGE", "label": "LABEL"}]}, raw_bytes=None)
def test_random_datalists_are_accepted_only_when_valid(content, raw_bytes):
    image, label, args = VALID["png_image"]
    workdir = Path(tempfile.mkdtemp(dir=FILES_ROOT))
    path = workdir / "dataset.json"
    if raw_bytes is not None:  # not JSON, or not UTF-8
        path.write_bytes(raw_bytes)
    else:
        path.write_text(json.dumps(_substitute(content, image, label), ensure_ascii=True))
    STATS["datalist:tried"] += 1
    try:
        with _time_bound():
            entries = check_datalist(load_datalist(str(path), "training"), **args)
    except LightVesselError as err:
        assert content != {"training": [{"image": "IMAGE", "label": "LABEL"}]} or raw_bytes is not None, str(err)
        message = str(err)
        assert "\n" not in message and len(message) < 600, message
        assert str(path) in message or "entry" in message, f"the error names neither file nor entry: {message}"
        STATS["datalist:rejected"] += 1
        return
    STATS["datalist:accepted"] += 1
    valid = {Path(image).resolve(), Path(label).resolve()}
    for entry in entries:  # accepted: every entry names valid files (a mask is a valid one-channel image too)
        assert {Path(entry["image"]).resolve(), Path(entry["label"]).resolve()} <= valid
