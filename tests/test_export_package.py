"""The Model Zoo package (``python -m lightvessel_monai.export``): the zip's layout file by file, the packaged bundle's
inference with this project's package not importable, the Zoo's own checks, the model card, and bad input.

The student is a seeded, untrained ``network_def`` (nothing is trained here); the report is a hand-made
``eval/report.csv`` with numbers no real run gives, so the card can be seen to copy them.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from lightvessel_monai.export.__main__ import main
from lightvessel_monai.export.formats import max_abs_difference, onnx_predict

from conftest import REPO, SHARED_DATA

SCHEMA = SHARED_DATA.parent / "schemas" / "meta_schema_20240725.json"
PACKAGE_SOURCE = REPO / "lightvessel_monai"
REPORT_CSV = (
    "model,dice,params,cpu_latency_ms,checkpoint\n"
    "teacher,0.9137,4379690,812.3,models/teacher/teacher_x.pt\n"
    "student,0.8761,381546,97.4,models/model.pt\n"
)
REPORT_MD = (
    "| model | Dice | parameters | median CPU latency, one 512x512 image (ms, 2 threads) |\n|---|---|---|---|\n"
    "| teacher | 0.9137 | 4,379,690 | 812.3 |\n| student | 0.8761 | 381,546 | 97.4 |\n"
)
GUARD = '''"""Import guard: lightvessel_monai may be imported only from LIGHTVESSEL_ALLOWED (the package's scripts/)."""
import importlib.machinery
import os
import sys

ALLOWED = os.path.realpath(os.environ["LIGHTVESSEL_ALLOWED"]) + os.sep


class Guard:
    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname != "lightvessel_monai":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, sys.path)
        origin = os.path.realpath(spec.origin) if spec is not None and spec.origin else None
        if origin is None or not origin.startswith(ALLOWED):
            sys.stderr.write(f"import guard: lightvessel_monai from {origin} refused\\n")
            raise ImportError(f"import guard: lightvessel_monai from {origin} refused")
        return spec


sys.meta_path.insert(0, Guard)  # before the editable install's finder
'''


def make_bundle(root: Path, network_def=None, report=True) -> Path:
    """A copy of the repository's bundle with a seeded student ``models/model.pt`` (and a report)."""
    shutil.copytree(REPO / "bundle", root, ignore=shutil.ignore_patterns("models", "eval", "data", "runs"))
    if network_def is not None:
        config = json.loads((root / "configs" / "inference.json").read_text())
        config["network_def"] = network_def
        (root / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    (root / "models").mkdir()
    torch.save(network.state_dict(), root / "models" / "model.pt")
    if report:
        (root / "eval").mkdir()
        (root / "eval" / "report.csv").write_text(REPORT_CSV)
        (root / "eval" / "report.md").write_text(REPORT_MD)
    return root


def unpack(zip_path: Path, where: Path) -> Path:
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(where)
    (folder,) = list(where.iterdir())
    return folder


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """The 2D package of a seeded student: (source bundle, zip path, unpacked folder)."""
    root = tmp_path_factory.mktemp("package")
    bundle = make_bundle(root / "bundle")
    assert main(["--bundle", str(bundle), "--out", str(root / "dist")]) == 0
    (zip_path,) = list((root / "dist").iterdir())
    return bundle, zip_path, unpack(zip_path, root / "unpacked")


def test_the_zip_holds_the_zoo_layout_file_by_file(packaged):
    bundle, zip_path, folder = packaged
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert zip_path.name == f"{folder.name}_v{meta['version']}.zip" and "segmentation" in folder.name
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
    assert all(n.startswith(folder.name + "/") for n in names), "one top-level folder"
    files = {n[len(folder.name) + 1 :] for n in names}
    vendored = {f for f in files if f.startswith("scripts/lightvessel_monai/")}
    sources = [p for p in PACKAGE_SOURCE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    source = {f"scripts/lightvessel_monai/{p.relative_to(PACKAGE_SOURCE).as_posix()}" for p in sources}
    assert vendored == source, "the whole package source is vendored, nothing else"
    configs = {f"configs/{p.name}" for p in (bundle / "configs").iterdir()}
    expected = configs | {"LICENSE", "docs/README.md", "docs/data_license.txt", "scripts/__init__.py"}
    expected |= {"models/model.pt", "models/model.ts", "models/model.onnx"}
    assert files - vendored == expected
    for name in ("LICENSE", "docs/data_license.txt", "configs/logging.conf", "configs/evaluate.json"):
        assert (folder / name).read_bytes() == (bundle / name).read_bytes(), name
    for name in vendored:
        assert (folder / name).read_bytes() == (REPO / "lightvessel_monai" / name.split("/", 2)[2]).read_bytes()

    # the configs: same content as the bundle's, except the first import, which finds the vendored code
    for name in ("inference.json", "train.json"):
        packaged_config = json.loads((folder / "configs" / name).read_text())
        original = json.loads((bundle / "configs" / name).read_text())
        assert packaged_config["imports"] == ["$import scripts"] + original["imports"]
        assert {k: v for k, v in packaged_config.items() if k != "imports"} == {
            k: v for k, v in original.items() if k != "imports"
        }
    packaged_meta = json.loads((folder / "configs" / "metadata.json").read_text())
    assert "lightvessel-monai" not in packaged_meta["required_packages_version"], "vendored, not a requirement"
    assert packaged_meta["eval_metrics"] == {"mean_dice": 0.8761}, "from the report"
    assert packaged_meta["network_data_format"] == meta["network_data_format"]

    # the weights: model.pt is the student's state dict; model.ts and model.onnx compute what it computes
    state = torch.load(folder / "models" / "model.pt", weights_only=True)
    source_state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert state.keys() == source_state.keys() and all(torch.equal(state[k], source_state[k]) for k in state)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(state)
    network.eval()
    x = torch.rand(2, 1, 96, 64, generator=torch.Generator().manual_seed(1))  # another size and batch than the export's
    with torch.no_grad():
        expected = network(x)
    from monai.data import load_net_with_metadata

    ts_file = folder / "models" / "model.ts"
    scripted, ts_meta, extra = load_net_with_metadata(ts_file, more_extra_files=["inference.json"])
    assert ts_meta["version"] == meta["version"], "ckpt_export embeds the metadata"
    assert json.loads(extra["inference.json"]) == json.loads((folder / "configs" / "inference.json").read_text())
    with torch.no_grad():
        assert max_abs_difference(expected, scripted(x)) <= 1e-5
    assert max_abs_difference(expected, onnx_predict(folder / "models" / "model.onnx", x)) <= 1e-4


def test_packaged_inference_runs_without_the_project_installed_and_equals_the_source(packaged, tmp_path):
    bundle, _, folder = packaged
    from lightvessel_monai.data.synthetic_2d import generate_angiogram

    (tmp_path / "images").mkdir()
    Image.fromarray(generate_angiogram(3, size=64)[0]).save(tmp_path / "images" / "case.png")
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    guarded = dict(clean, PYTHONPATH=str(guard), LIGHTVESSEL_ALLOWED=str(folder / "scripts"), OMP_NUM_THREADS="1")

    # the guard bites: this project's package is not importable in that environment
    proc = subprocess.run([sys.executable, "-c", "import lightvessel_monai"], cwd=tmp_path, env=guarded)
    assert proc.returncode != 0

    def infer(cwd, output_dir, env, extra=()):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
        cmd += ["--input_glob", str(tmp_path / "images" / "*.png"), "--output_dir", str(output_dir), *extra]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "import guard" not in proc.stderr
        return np.asarray(Image.open(output_dir / "predictions" / "case_seg.png"))

    packaged_mask = infer(folder, tmp_path / "packaged", guarded)  # the Zoo's way: from the bundle's folder
    source_mask = infer(bundle, tmp_path / "source", dict(os.environ, OMP_NUM_THREADS="1"), ["--bundle_root", "."])
    assert packaged_mask.shape == (64, 64) and set(np.unique(packaged_mask)) == {0, 255}, "a non-trivial mask"
    np.testing.assert_array_equal(packaged_mask, source_mask)


def test_packaged_inference_reads_a_dicom_cine_run_and_writes_its_seg(packaged, tmp_path):
    """The packaged bundle, from its folder and without this project importable, on a folder holding a PNG and a
    one-frame-per-image XA DICOM run of the same pictures: the DICOM SEG's frames are the PNG path's masks."""
    import highdicom as hd

    from lightvessel_monai.data.dicom import write_xa_cine
    from lightvessel_monai.data.synthetic_2d import generate_angiogram

    _, _, folder = packaged
    pictures = np.stack([generate_angiogram(seed, size=64)[0] for seed in (3, 4)])
    (tmp_path / "in").mkdir()
    for k, picture in enumerate(pictures):
        Image.fromarray(picture).save(tmp_path / "in" / f"case{k}.png")
    write_xa_cine(pictures, tmp_path / "in" / "RUN")  # no extension: recognised by its content
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    guarded = dict(clean, PYTHONPATH=str(guard), LIGHTVESSEL_ALLOWED=str(folder / "scripts"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    cmd += ["--input_glob", str(tmp_path / "in" / "*"), "--output_dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=folder, env=guarded, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "import guard" not in proc.stderr
    predictions = tmp_path / "out" / "predictions"
    seg = hd.seg.segread(predictions / "RUN" / "RUN_seg.dcm")
    from_png = np.stack([np.asarray(Image.open(predictions / f"case{k}_seg.png")) > 0 for k in (0, 1)])
    assert int(seg.NumberOfFrames) == 2 and from_png.any() and not from_png.all()
    np.testing.assert_array_equal(np.asarray(seg.pixel_array) > 0, from_png)
    assert (predictions / "RUN" / "RUN_preview.gif").is_file()


def test_zoo_verify_metadata_passes_offline_with_the_shared_schema(packaged, tmp_path):
    if not SCHEMA.is_file():
        pytest.skip(f"MONAI bundle schema not found at {SCHEMA} (../shared is absent)")
    _, _, folder = packaged
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)  # an existing file: verify_metadata does not download it
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", "configs/metadata.json"]
    cmd += ["--filepath", str(schema)]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "metadata is verified with no error" in proc.stdout + proc.stderr
    assert schema.read_bytes() == SCHEMA.read_bytes()


def test_zoo_verify_net_in_out_passes_on_the_package_with_its_defaults(packaged):
    _, _, folder = packaged
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file"]
    cmd += ["configs/metadata.json", "--config_file", "configs/inference.json"]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_version_and_changelog_of_the_package_agree(packaged):
    _, zip_path, folder = packaged
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    versions = list(meta["changelog"])
    assert versions[0] == meta["version"] and zip_path.name.endswith(f"_v{meta['version']}.zip")
    as_tuples = [tuple(int(p) for p in v.split(".")) for v in versions]
    assert as_tuples == sorted(as_tuples, reverse=True) and len(set(as_tuples)) == len(as_tuples)


def test_files_over_25_mb_are_listed_in_large_files_yml(packaged, tmp_path, monkeypatch):
    from lightvessel_monai.export import package

    _, zip_path, folder = packaged
    with zipfile.ZipFile(zip_path) as archive:
        large = [i.filename for i in archive.infolist() if i.file_size > package.LARGE_FILE_BYTES]
    listed = (folder / "large_files.yml").read_text() if (folder / "large_files.yml").exists() else ""
    assert all(f'path: "{name.split("/", 1)[1]}"' in listed for name in large)
    assert not large and not listed, "this student is small: no large file, no large_files.yml"
    # the listing itself, with a lower threshold
    monkeypatch.setattr(package, "LARGE_FILE_BYTES", 1000)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"x" * 1001)
    (tmp_path / "small.txt").write_bytes(b"x" * 1000)
    assert package._large_files(tmp_path) == ["models/model.pt"]
    text = (tmp_path / "large_files.yml").read_text()
    assert 'path: "models/model.pt"' in text and "small.txt" not in text and "hash_val" in text


def test_the_model_card_comes_from_the_report_and_the_metadata(packaged):
    bundle, _, folder = packaged
    card = (folder / "docs" / "README.md").read_text()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    for number in ("0.8761", "0.9137", "381,546", "4,379,690", "97.4", "812.3"):
        assert number in card, number
    assert "median CPU latency, one 512x512 image (ms, 2 threads)" in card
    assert "features=[24, 48, 96, 192, 384, 24]" in card, "the teacher"
    assert "`fsd`: `FeatureSimilarityDistillation`, weight 1.0" in card
    assert "`asd`: `AdversarialSimilarityDistillation`, weight 0.01" in card
    for key in ("intended_use", "data_source", "task"):
        assert meta[key] in card, key
    assert "No training report" not in card and "Warning" not in card


def test_the_model_card_says_when_there_is_no_report():
    from lightvessel_monai.export.package import _parser, model_card

    parser = _parser([REPO / "bundle" / "configs" / "train.json"])
    meta = json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text())
    card = model_card(meta, None, parser, torch.nn.Conv2d(1, 2, 1), [], "checked.")
    assert "No training report was found" in card and "| student |" not in card


class Unexportable(torch.nn.Module):
    """A segmentation head whose operator (digamma) has no ONNX export."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        return torch.digamma(self.conv(x).abs() + 1.0)


def run_main(args, capsys):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_failure(code, err, *needles):
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lightvessel_monai error: "), err[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input_a_bundle_without_a_trained_student(tmp_path):
    # through the real CLI, in a fresh interpreter: `python -m lightvessel_monai.export`
    bundle = make_bundle(tmp_path / "bundle")
    (bundle / "models" / "model.pt").unlink()
    cmd = [sys.executable, "-m", "lightvessel_monai.export", "--bundle", str(bundle), "--out", str(tmp_path / "dist")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lightvessel_monai error: ")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(errors) == 1 and "model.pt does not exist" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "dist").exists()


def test_bad_input_a_checkpoint_that_does_not_fit_network_def(tmp_path, capsys):
    from conftest import tiny_unet

    bundle = make_bundle(tmp_path / "bundle")
    torch.save(tiny_unet(2).state_dict(), bundle / "models" / "model.pt")
    (tmp_path / "dist").mkdir()
    code, err = run_main(["--bundle", bundle, "--out", tmp_path / "dist"], capsys)
    assert_one_line_failure(code, err, "model.pt", "shape mismatches")
    assert not list((tmp_path / "dist").iterdir())


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_bad_input_an_output_folder_that_cannot_be_written(tmp_path, capsys, where):
    bundle = make_bundle(tmp_path / "bundle", report=False)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    out = blocker if where == "a file" else blocker / "dist"
    code, err = run_main(["--bundle", bundle, "--out", out], capsys)
    assert_one_line_failure(code, err, str(out), "is a file")
    assert blocker.read_text() == "not a folder"


def test_bad_input_a_network_that_cannot_be_exported_to_onnx(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "bundle", {"_target_": f"{__name__}.Unexportable"}, report=False)
    (tmp_path / "dist").mkdir()
    code, err = run_main(["--bundle", bundle, "--out", tmp_path / "dist"], capsys)
    assert_one_line_failure(code, err, "cannot be exported to ONNX", "digamma")
    assert not list((tmp_path / "dist").iterdir())


def test_a_3d_bundle_packages_and_its_inference_writes_a_nifti_aligned_to_the_input(tmp_path):
    """The synthetic 3D overlay merged into the packaged configs; metadata from the 3D meta overlay and the network."""
    import nibabel as nib
    from monai.bundle import verify_net_in_out

    from lightvessel_monai.data.synthetic_3d import make_synthetic_ct

    overlay, meta_overlay = (
        REPO / "configs" / "data" / "synthetic_3d.json",
        REPO / "configs" / "meta" / "synthetic_3d.json",
    )
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundle", bundle, ignore=shutil.ignore_patterns("models", "eval", "data", "runs"))
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.json"), str(overlay)])
    torch.manual_seed(0)
    (bundle / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    args = ["--bundle", bundle, "--out", tmp_path / "dist", "--config_overlay", overlay, "--meta_overlay", meta_overlay]
    assert main([str(a) for a in args]) == 0
    (zip_path,) = list((tmp_path / "dist").iterdir())
    folder = unpack(zip_path, tmp_path / "unpacked")
    assert folder.name == "lightvessel_liver_vessel_segmentation_3d"

    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == ["16*n"] * 3 and image["modality"] == "CT"
    assert meta["network_data_format"]["outputs"]["pred"]["spatial_shape"] == ["16*n"] * 3
    packaged = json.loads((folder / "configs" / "inference.json").read_text())
    assert packaged["spatial_dims"] == 3 and packaged["network_def"]["_target_"] == "UNet", "the overlay is merged"
    # MONAI's check of the metadata against the network, with its defaults (n=1: 16^3), in process
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(folder / "configs" / "metadata.json"),
        config_file=[str(REPO / "bundle" / "configs" / "inference.json"), str(overlay)],
    )
    if SCHEMA.is_file():
        import jsonschema

        jsonschema.validate(meta, json.loads(SCHEMA.read_text()))

    make_synthetic_ct(tmp_path / "ct", num_train=1, num_val=0, shape=(40, 40, 20))
    (volume,) = sorted((tmp_path / "ct" / "imagesTr").glob("*.nii.gz"))
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    guarded = dict(clean, PYTHONPATH=str(guard), LIGHTVESSEL_ALLOWED=str(folder / "scripts"), OMP_NUM_THREADS="1")

    def infer(cwd, config, output_dir, env):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--input_glob", str(volume)]
        cmd += ["--output_dir", str(output_dir), "--bundle_root", "."]
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (pred,) = list((output_dir / "predictions").glob("*_seg.nii.gz"))
        return nib.load(pred)

    packaged_pred = infer(folder, "configs/inference.json", tmp_path / "packaged", guarded)
    sources = f"['configs/inference.json','{overlay}']"
    source_pred = infer(bundle, sources, tmp_path / "source", dict(os.environ, OMP_NUM_THREADS="1"))
    source = nib.load(volume)
    assert packaged_pred.shape[:3] == source.shape[:3]
    np.testing.assert_allclose(packaged_pred.affine, source.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(packaged_pred.dataobj), np.asarray(source_pred.dataobj))
