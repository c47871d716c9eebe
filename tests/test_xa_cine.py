"""Multi-frame XA DICOM cine runs in, DICOM SEG out: reading the real runs, the real inference command end to end, and
bad input.

The student is the XCA overlay's ``network_def`` with seeded random weights whose last bias is shifted so that about
half of the frame is called vessel (a non-trivial mask to compare; its Dice is no measure of quality). The phantom runs
of ``../shared/data/XA_DICOM_phantom_cine`` have no masks; the synthetic run's truth is the generator's masks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image
from scipy import ndimage

from lightvessel_monai.cine import split_inputs
from lightvessel_monai.cine.frames import FramePipeline, grey_frames
from lightvessel_monai.cine.preview import png_mask_name
from lightvessel_monai.cine.staging import StagedOutputs
from lightvessel_monai.data.dicom import write_xa_cine
from lightvessel_monai.data.synthetic_2d import generate_angiogram
from lightvessel_monai.data.xa_dicom import check_cine, read_frames, shutter_inside
from lightvessel_monai.errors import DataError

from conftest import REPO, SHARED_DATA

CINE = SHARED_DATA / "XA_DICOM_phantom_cine"
RUNS = {"IM1": 14, "IM6": 9, "IM8": 8}
CONFIGS = [REPO / "bundle" / "configs" / "inference.json", REPO / "configs" / "data" / "xca.json"]
CONFIG_ARG = "[" + ",".join(f"'{c}'" for c in CONFIGS) + "]"


def _require_cine() -> None:
    if not CINE.is_dir():
        pytest.skip(f"XA DICOM cine runs not found at {CINE} (../shared is absent)")


def _parser() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(c) for c in CONFIGS])
    return parser


def _balanced_student(path: Path, image: torch.Tensor) -> None:
    """Save the seeded XCA student to ``path`` with its vessel logit shifted to the median over ``image`` (1, W, H)."""
    torch.manual_seed(0)
    network = _parser().get_parsed_content("network_def").eval()
    with torch.no_grad():
        logits = network(image[None].float())[0]
    state = network.state_dict()
    last_bias = [k for k in state if k.endswith("bias")][-1]
    assert state[last_bias].shape == (2,)
    state[last_bias][1] -= float((logits[1] - logits[0]).median())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def _infer(inputs: str, root: Path, out: Path) -> subprocess.CompletedProcess:
    """The documented inference command (XCA overlay) on ``inputs``, in a fresh interpreter."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIG_ARG, "--input_glob", inputs]
    cmd += ["--ckpt_dir", str(root / "models"), "--output_dir", str(out), "--bundle_root", str(root / "bundle")]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


# ------------------------------------------------------------------------------------------------ the real runs


@pytest.mark.parametrize("name", list(RUNS))
def test_real_runs_read_with_their_frame_counts_and_the_pixels_of_an_independent_decoder(name):
    _require_cine()
    import libjpeg
    from pydicom.encaps import generate_frames

    run = check_cine(CINE / name)
    assert (run.frames, run.rows, run.columns, run.frame_rate) == (RUNS[name], 512, 512, 15.0)
    assert run.name == name and "JPEG Lossless" in run.transfer_syntax
    header, frames = read_frames(run)
    assert frames.shape == (RUNS[name], 512, 512) and frames.dtype == np.uint8
    assert "PixelData" not in header and header.SOPInstanceUID == run.sop_instance_uid
    # libjpeg's decoder called directly on the encapsulated frames, not through pydicom's pixel pipeline
    raw = pydicom.dcmread(CINE / name)
    encoded = list(generate_frames(raw.PixelData, number_of_frames=RUNS[name]))
    assert len(encoded) == RUNS[name]
    for k, data in enumerate(encoded):
        np.testing.assert_array_equal(libjpeg.decode(data), frames[k])
    if name == "IM1":  # and ITK (GDCM's JPEG decoder), as MONAI's LoadImage reads the file: (columns, rows, frames)
        from monai.data import ITKReader

        reader = ITKReader()
        volume, _ = reader.get_data(reader.read(str(CINE / name)))
        np.testing.assert_array_equal(np.asarray(volume).transpose(2, 1, 0), frames)


def test_the_run_field_follows_the_shutter_and_the_dark_surround():
    """The exposed field of the phantom runs: inside the DICOM shutter, off the dark band, one field for the run."""
    _require_cine()
    pipeline = FramePipeline(_parser().get_parsed_content("preprocessing"))
    for name in RUNS:
        header, frames = read_frames(check_cine(CINE / name))
        field = pipeline.run_field(header, grey_frames(frames, 8))
        shutter = shutter_inside(header, frames.shape[1:])
        assert shutter is not None and not (field & ~shutter).any(), "the field lies inside the shutter"
        assert 0.85 < field.mean() < 0.92 and field[256, 256]
        edge = field & ~ndimage.binary_erosion(field, iterations=3)  # the field's outer 3 px
        assert np.median(frames, axis=0)[edge].min() > 90, "no dark surround pixel (the cut corners) is left in it"
    # IM1's first frame is noisy: its own field (the XCA transform per frame) would miss the surround altogether
    from lightvessel_monai.data.field_of_view import xray_field_of_view

    _, frames = read_frames(check_cine(CINE / "IM1"))
    assert xray_field_of_view(frames[0].astype(float))[0].all()


@pytest.mark.integration
def test_inference_on_im1_writes_a_dicom_seg_of_its_frames_with_its_references(tmp_path):
    _require_cine()
    run = check_cine(CINE / "IM1")
    header, frames = read_frames(run)
    pipeline = FramePipeline(_parser().get_parsed_content("preprocessing"))
    item = pipeline(run, 0, grey_frames(frames, 8)[0], pipeline.run_field(header, grey_frames(frames, 8)))
    _balanced_student(tmp_path / "models" / "model.pt", item["image"])

    proc = _infer(str(CINE / "IM1"), tmp_path, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "out" / "predictions" / "IM1"
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == sorted(
        ["IM1_seg.dcm", "IM1_preview.gif"] + [png_mask_name("IM1", k) for k in range(1, 15)]
    ), "the outputs, under output_dir only"

    import highdicom as hd

    seg = hd.seg.segread(folder / "IM1_seg.dcm")
    source = pydicom.dcmread(CINE / "IM1", stop_before_pixels=True)
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage and seg.SegmentationType == "BINARY"
    assert int(seg.NumberOfFrames) == 14
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "coronary artery"
    prop = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (prop.CodeValue, prop.CodingSchemeDesignator) == ("41801008", "SCT")
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
    # the references: the source series and instance, and each SEG frame's own source frame
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence] == [source.SOPInstanceUID]
    for number, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        (ref,) = item.DerivationImageSequence[0].SourceImageSequence
        assert (ref.ReferencedSOPInstanceUID, int(ref.ReferencedFrameNumber)) == (source.SOPInstanceUID, number)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID"):
        assert seg.get(keyword) == source.get(keyword), keyword
    assert seg.StudyDate == source.StudyDate and seg.AccessionNumber == source.AccessionNumber

    # the SEG's pixels are the PNG masks, frame for frame, also as highdicom maps them to the source frames
    pngs = np.stack([np.asarray(Image.open(folder / png_mask_name("IM1", k))) for k in range(1, 15)])
    assert pngs.shape == (14, 512, 512) and set(np.unique(pngs)) == {0, 255}
    assert 0.05 < (pngs > 0).mean() < 0.95, "a non-trivial mask"
    by_frame = seg.get_pixels_by_source_frame(source.SOPInstanceUID, list(range(1, 15)), segment_numbers=[1])
    np.testing.assert_array_equal(by_frame[..., 0] > 0, pngs > 0)
    np.testing.assert_array_equal(seg.pixel_array > 0, pngs > 0)

    with Image.open(folder / "IM1_preview.gif") as gif:
        assert gif.n_frames == 14 and gif.size == (512, 512)


# ---------------------------------------------------------------------------------------------- the synthetic run


@pytest.mark.integration
def test_a_synthetic_run_gives_the_png_paths_masks_and_dice(tmp_path):
    """Three generator angiograms (320 x 320, the XCA window's size) as one uncompressed XA file, and as PNGs."""
    pictures = [generate_angiogram(seed, size=320) for seed in (11, 12, 13)]
    images, truth = np.stack([p[0] for p in pictures]), np.stack([p[1] for p in pictures])
    (tmp_path / "xa").mkdir()
    write_xa_cine(images, tmp_path / "xa" / "RUN7")
    (tmp_path / "png").mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "png" / f"frame{k + 1}.png")
    preprocessing = _parser().get_parsed_content("preprocessing")
    _balanced_student(
        tmp_path / "models" / "model.pt", preprocessing({"image": str(tmp_path / "png" / "frame1.png")})["image"]
    )

    for inputs, out in ((tmp_path / "xa" / "*", "out_dicom"), (tmp_path / "png" / "*.png", "out_png")):
        proc = _infer(str(inputs), tmp_path, tmp_path / out)
        assert proc.returncode == 0, proc.stderr[-3000:]
    import highdicom as hd

    seg = hd.seg.segread(tmp_path / "out_dicom" / "predictions" / "RUN7" / "RUN7_seg.dcm")
    from_seg = np.asarray(seg.pixel_array) > 0
    from_png = np.stack([np.asarray(Image.open(tmp_path / "out_png" / "predictions" / f"frame{k}_seg.png")) > 0
                         for k in (1, 2, 3)])  # fmt: skip
    assert from_seg.shape == from_png.shape == (3, 320, 320) and 0.05 < from_png.mean() < 0.95
    np.testing.assert_array_equal(from_seg, from_png)
    dice_seg = [_dice(m, t) for m, t in zip(from_seg, truth, strict=True)]
    dice_png = [_dice(m, t) for m, t in zip(from_png, truth, strict=True)]
    assert dice_seg == dice_png and all(d > 0 for d in dice_seg)


# ----------------------------------------------------------------------------------------------------- bad input


def _structured_report(path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = BasicTextSRStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID, "SR"
    ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "x", generate_uid(), generate_uid()
    ds.ValueType, ds.TextValue = "TEXT", "no stenosis"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _truncated(path: Path) -> None:
    write_xa_cine(np.full((3, 64, 64), 100, np.uint8), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 64 * 64])  # one frame short


def _undecodable(path: Path) -> None:
    """An XA run whose transfer syntax needs a plugin that is not installed (HTJ2K without pylibjpeg-openjpeg)."""
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless

    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("an HTJ2K decoder is installed here: no transfer syntax is left undecodable to test with")
    write_xa_cine(np.zeros((2, 64, 64), np.uint8), path)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)] * 2)  # two (fake) codestreams: never decoded
    ds["PixelData"].VR = "OB"
    pydicom.dcmwrite(path, ds)


def _colour(path: Path) -> None:
    write_xa_cine(np.zeros((2, 32, 32 * 3), np.uint8), path)  # the byte count of 2 RGB frames of 32 x 32
    ds = pydicom.dcmread(path)
    ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 32, 3, "RGB", 0
    pydicom.dcmwrite(path, ds)


def _truncated_real_run(path: Path) -> None:
    """IM1 (JPEG Lossless) cut at two thirds: inside its encapsulated pixel data."""
    _require_cine()
    path.write_bytes((CINE / "IM1").read_bytes()[:2_500_000])


BAD = {
    "a structured report": (_structured_report, "is a DICOM Basic Text SR Storage (Modality SR), not an image"),
    "truncated pixel data": (_truncated, "is truncated: 8192 of the 12288 bytes of its pixel data (3 frames)"),
    "a truncated JPEG Lossless run": (_truncated_real_run, "is truncated: the file ends inside its pixel data"),
    "an undecodable transfer syntax": (
        _undecodable,
        "High-Throughput JPEG 2000 Image Compression (Lossless Only) (1.2.840.10008.1.2.4.201), which no installed "
        "pydicom plugin decodes: pip install 'pylibjpeg>=2.0' 'pylibjpeg-openjpeg>=2.0'",
    ),
    "colour frames": (_colour, "has 2 frames of 3-sample RGB pixels; the network reads 2D greyscale frames"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_dicom_input_is_one_line_naming_the_file(tmp_path, case):
    make, expected = BAD[case]
    make(tmp_path / "IM9")
    write_xa_cine(np.full((2, 64, 64), 120, np.uint8), tmp_path / "IM2")  # a good run first: checked, not enough
    with pytest.raises(DataError) as caught:
        split_inputs([str(tmp_path / "IM2"), str(tmp_path / "IM9")])
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"input {tmp_path / 'IM9'} "), message
    assert expected in message, message


@pytest.mark.integration
def test_bad_dicom_input_through_the_command_is_one_line_and_writes_nothing(tmp_path):
    """The real command: one ``lightvessel_monai error:`` line, exit 1, nothing in output_dir (pre-flight stops it
    before the network is built, also for the good run beside the bad one)."""
    (tmp_path / "in").mkdir()
    _undecodable(tmp_path / "in" / "IM9")
    write_xa_cine(np.full((2, 64, 64), 120, np.uint8), tmp_path / "in" / "IM2")
    _balanced_student(tmp_path / "models" / "model.pt", torch.zeros(1, 64, 64))
    out = tmp_path / "out"
    proc = _infer(str(tmp_path / "in" / "IM*"), tmp_path, out)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lightvessel_monai error: ")]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        str(tmp_path / "in" / "IM9") in lines[0]
        and "pip install 'pylibjpeg>=2.0' 'pylibjpeg-openjpeg>=2.0'" in lines[0]
    )
    assert not out.exists(), "nothing in output_dir"


def test_staged_outputs_leave_nothing_when_a_run_fails(tmp_path):
    out = tmp_path / "eval" / "predictions"
    with pytest.raises(RuntimeError), StagedOutputs(out) as outputs:
        (outputs.folder("IM1") / "IM1_seg.dcm").write_bytes(b"x")
        raise RuntimeError("the second run does not decode")
    assert not (tmp_path / "eval").exists(), "the folders it created are removed"
    out.mkdir(parents=True)
    (out / "IM1").mkdir()
    (out / "IM1" / "old.png").write_bytes(b"old")
    with StagedOutputs(out) as outputs:
        (outputs.folder("IM1") / "new.png").write_bytes(b"new")
        assert [p.name for p in (out / "IM1").iterdir()] == ["old.png"], "nothing appears before the commit"
        outputs.commit()
    assert [p.name for p in out.iterdir()] == ["IM1"] and [p.name for p in (out / "IM1").iterdir()] == ["new.png"]


def test_a_run_that_fails_to_decode_leaves_nothing_of_any_run(tmp_path):
    """Two runs that pass the header checks; the second's RLE frames are zeroed, so its decode fails while the runs are
    processed, after the first run was segmented: the command fails with one line and output_dir stays empty."""
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import RLELossless

    (tmp_path / "in").mkdir()
    write_xa_cine(np.full((2, 64, 64), 120, np.uint8), tmp_path / "in" / "A")
    write_xa_cine(np.full((2, 64, 64), 90, np.uint8), tmp_path / "in" / "B")
    ds = pydicom.dcmread(tmp_path / "in" / "B")
    ds.compress(RLELossless)
    ds.PixelData = encapsulate([bytes(len(f)) for f in generate_frames(ds.PixelData, number_of_frames=2)])
    ds.save_as(tmp_path / "in" / "B")
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "inference.json"))  # the default bundle: fast at 64 px
    parser["input_glob"], parser["ckpt_dir"] = str(tmp_path / "in" / "*"), str(tmp_path / "models")
    parser["output_dir"] = str(tmp_path / "out")
    (tmp_path / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    cine = parser.get_parsed_content("cine")
    assert [r.name for r in cine.runs] == ["A", "B"], "both pass the header checks"
    with pytest.raises(DataError, match=r"input .*/B cannot be decoded"):
        cine.run()
    assert cine.timings and "write" in cine.timings[0], "run A was segmented and written (staged) first"
    assert not (tmp_path / "out").exists(), "nothing in output_dir"


def test_header_details_shutters_frame_rate_monochrome1_and_12_bit(tmp_path):
    from pydicom.dataset import Dataset

    ds = Dataset()
    assert shutter_inside(ds, (8, 10)) is None, "no shutter module: no shutter"
    ds.ShutterShape = ["RECTANGULAR", "CIRCULAR"]
    ds.ShutterLeftVerticalEdge, ds.ShutterRightVerticalEdge = 2, 9  # 1-based columns
    ds.ShutterUpperHorizontalEdge, ds.ShutterLowerHorizontalEdge = 1, 8
    ds.CenterOfCircularShutter, ds.RadiusOfCircularShutter = [4, 5], 3  # row, column (1-based), pixels
    inside = shutter_inside(ds, (8, 10))
    rows, cols = np.ogrid[:8, :10]
    expected = (cols >= 1) & (cols <= 8) & ((rows - 3) ** 2 + (cols - 4) ** 2 <= 9)
    np.testing.assert_array_equal(inside, expected)
    ds.ShutterShape = "POLYGONAL"
    ds.VerticesOfThePolygonalShutter = [1, 1, 1, 10, 8, 1]  # a triangle: (row, column) pairs
    polygon = shutter_inside(ds, (8, 10))
    assert polygon[0, 0] and polygon[0, 8] and polygon[6, 0] and not polygon[7, 9] and not polygon[4, 8]

    from lightvessel_monai.data.xa_dicom import frame_rate

    assert frame_rate(Dataset()) is None
    timed = Dataset()
    timed.FrameTime = "33.3333"
    assert frame_rate(timed) == pytest.approx(30.0, abs=1e-3)
    timed.CineRate = 25
    assert frame_rate(timed) == 25.0, "CineRate first"

    stored = np.array([[[0, 4095], [1000, 2048]]], np.uint16)  # one 2 x 2 frame, 12 bits stored
    path = write_xa_cine(stored, tmp_path / "M1")
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit, ds.PhotometricInterpretation = 12, 11, "MONOCHROME1"
    ds.save_as(path)
    run = check_cine(path)
    _, frames = read_frames(run)
    np.testing.assert_array_equal(frames, 4095 - stored)  # MONOCHROME1: the lowest value is white
    np.testing.assert_allclose(grey_frames(frames, run.bits_stored), (4095 - stored) * 255.0 / 4095, rtol=1e-6)
