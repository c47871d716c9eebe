"""The synthetic generators never delete or overwrite a file they did not write (a user's dataset_dir)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightvessel_monai.data._synthetic_files import MARKER
from lightvessel_monai.data.synthetic_2d import make_synthetic_angiograms
from lightvessel_monai.data.synthetic_3d import make_synthetic_ct
from lightvessel_monai.errors import DataError


def _user_dataset(root: Path) -> dict[Path, bytes]:
    """An MSD-style folder as a user has it: dataset.json and image/label files of their own."""
    files = {
        root / "dataset.json": json.dumps(
            {"name": "MyHospitalCT", "training": [{"image": "imagesTr/case_001.nii.gz"}]}
        ).encode(),
        root / "imagesTr" / "case_001.nii.gz": b"\x1f\x8b my scan",
        root / "labelsTr" / "case_001.nii.gz": b"\x1f\x8b my label",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make_2d(root: Path) -> str:
    return make_synthetic_angiograms(root, num_train=1, num_val=1, size=64, seed=0)


def _make_3d(root: Path) -> str:
    return make_synthetic_ct(root, num_train=1, num_val=1, shape=(32, 32, 16), seed=0)


@pytest.mark.parametrize("make", [_make_2d, _make_3d], ids=["2d", "3d"])
def test_a_users_dataset_is_refused_and_left_untouched(tmp_path, make):
    root = tmp_path / "my_msd_dataset"
    _user_dataset(root)
    before = _snapshot(root)
    with pytest.raises(DataError, match="did not write") as info:
        make(root)
    message = str(info.value)
    assert "\n" not in message and str(root) in message and "dataset.json" in message
    assert _snapshot(root) == before  # nothing deleted, overwritten or added (not even the marker)


@pytest.mark.parametrize("make", [_make_2d, _make_3d], ids=["2d", "3d"])
def test_a_stray_file_in_our_own_cache_is_refused(tmp_path, make):
    root = tmp_path / "synth"
    make(root)
    assert (root / MARKER).is_file()
    stray = root / "imagesTr" / "notes.txt"
    stray.write_text("mine")
    (root / "dataset.json").unlink()  # forces a regeneration, which would clean the folder
    with pytest.raises(DataError, match=r"imagesTr/notes\.txt"):
        make(root)
    assert stray.read_text() == "mine"


def test_an_empty_folder_and_a_cache_from_before_the_marker_are_ours(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Path(_make_2d(empty)).is_file() and (empty / MARKER).is_file()
    legacy = tmp_path / "legacy"
    _make_2d(legacy)
    (legacy / MARKER).unlink()
    (legacy / "labelsTr" / "angio_0000.png").unlink()  # an incomplete old cache: regenerated, not refused
    _make_2d(legacy)
    assert (legacy / "labelsTr" / "angio_0000.png").is_file() and (legacy / MARKER).is_file()


def test_a_file_given_as_dataset_dir_is_refused(tmp_path):
    target = tmp_path / "dataset.txt"
    target.write_text("not a folder")
    with pytest.raises(DataError, match="is not a folder"):
        _make_2d(target)


@pytest.mark.integration
def test_the_bundle_command_refuses_a_users_dataset_dir(tmp_path):
    root = tmp_path / "my_msd_dataset"
    _user_dataset(root)
    before = _snapshot(root)
    from test_bundle import run_bundle

    proc = run_bundle("training", ["train.json"], tmp_path / "bundle", {"dataset_dir": root}, check=False, tiny=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lightvessel_monai error:")]
    assert len(lines) == 1 and str(root) in lines[0] and "did not write" in lines[0], proc.stderr[-3000:]
    assert _snapshot(root) == before
