"""Datalist loading and file checks: every bad input fails with one line naming the file and the problem."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from lightvessel_monai.data.checks import check_datalist, load_datalist
from lightvessel_monai.errors import DataError


def _png(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def _nifti(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


def _mask(shape: tuple[int, ...], high: int = 1) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[tuple(slice(s // 4, s // 2) for s in shape)] = high
    return mask


def _pair_2d(root: Path, name: str = "a", shape: tuple[int, int] = (32, 32)) -> dict:
    rgb = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    return {
        "image": _png(root / "imagesTr" / f"{name}.png", rgb),
        "label": _png(root / "labelsTr" / f"{name}.png", _mask(shape)),
    }


def _pair_3d(root: Path, name: str = "a", shape: tuple[int, int, int] = (16, 16, 8)) -> dict:
    image = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return {
        "image": _nifti(root / "imagesTr" / f"{name}.nii.gz", image),
        "label": _nifti(root / "labelsTr" / f"{name}.nii.gz", _mask(shape)),
    }


def _raises(datalist: list, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        check_datalist(datalist, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ valid input


def test_valid_2d_datalist_passes_unchanged(tmp_path: Path) -> None:
    datalist = [_pair_2d(tmp_path, "a"), _pair_2d(tmp_path, "b")]
    before = json.dumps(datalist)
    assert check_datalist(datalist) is datalist
    assert json.dumps(datalist) == before


def test_valid_3d_datalist_passes_unchanged(tmp_path: Path) -> None:
    datalist = [_pair_3d(tmp_path, "a"), _pair_3d(tmp_path, "b", shape=(12, 10, 6))]
    # a 4D image with a trailing singleton and an uncompressed label are fine too
    datalist.append(
        {
            "image": _nifti(tmp_path / "imagesTr" / "c.nii.gz", np.zeros((8, 8, 4, 1), np.float32)),
            "label": _nifti(tmp_path / "labelsTr" / "c.nii", _mask((8, 8, 4))),
        }
    )
    before = json.dumps(datalist)
    assert check_datalist(datalist) is datalist
    assert json.dumps(datalist) == before


def test_load_datalist_joins_paths_and_checks(tmp_path: Path) -> None:
    _pair_2d(tmp_path, "a")
    (tmp_path / "dataset.json").write_text(
        json.dumps({"training": [{"image": "imagesTr/a.png", "label": "labelsTr/a.png"}], "validation": []})
    )
    datalist = load_datalist(str(tmp_path / "dataset.json"))
    assert datalist == [{"image": str(tmp_path / "imagesTr/a.png"), "label": str(tmp_path / "labelsTr/a.png")}]
    assert check_datalist(datalist) is datalist


# ------------------------------------------------------------------------------------- datalist errors


def test_empty_datalist(tmp_path: Path) -> None:
    assert _raises([], source="datalist train.json") == "datalist train.json is empty"
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(DataError, match=r"^datalist .*dataset\.json key 'training' is empty$"):
        load_datalist(str(path))


def test_missing_datalist_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(DataError) as info:
        load_datalist(str(path))
    assert str(info.value) == f"datalist {path} does not exist"


def test_missing_key_in_json_datalist(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"training": [{"image": "a.png", "label": "b.png"}], "name": "x"}))
    with pytest.raises(DataError) as info:
        load_datalist(str(path), data_list_key="validation")
    assert str(info.value) == f"datalist {path} has no key 'validation' (keys: training, name)"


def test_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text('{"training": [\n  {"image": "a.png", "label": "b.png"},\n]}')
    with pytest.raises(DataError) as info:
        load_datalist(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"datalist {path} is not valid JSON: ")
    assert "line 3 column 1" in message


def test_entry_missing_key(tmp_path: Path) -> None:
    entry = _pair_2d(tmp_path)
    del entry["label"]
    message = _raises([_pair_2d(tmp_path, "b"), entry])
    assert message == "datalist entry 1 has no key 'label' (keys: image)"


# ---------------------------------------------------------------------------------------- file errors


def test_missing_file(tmp_path: Path) -> None:
    entry = _pair_2d(tmp_path)
    entry["label"] = str(tmp_path / "labelsTr" / "missing.png")
    message = _raises([entry], source="datalist dataset.json key 'training'")
    assert message == f"datalist dataset.json key 'training' entry 0: label {entry['label']} does not exist"


def test_garbage_png(tmp_path: Path) -> None:
    entry = _pair_2d(tmp_path)
    Path(entry["image"]).write_bytes(b"this is not an image at all" * 10)
    message = _raises([entry])
    assert message.startswith(f"datalist entry 0: image {entry['image']} cannot be read as an image")


@pytest.mark.parametrize("key", ["image", "label"])
def test_truncated_png(tmp_path: Path, key: str) -> None:
    entry = _pair_2d(tmp_path, shape=(64, 64))
    data = Path(entry[key]).read_bytes()
    Path(entry[key]).write_bytes(data[: len(data) // 2])
    message = _raises([entry])
    assert message.startswith(f"datalist entry 0: {key} {entry[key]} cannot be read as an image")


def test_truncated_nifti_gz_image(tmp_path: Path) -> None:
    entry = _pair_3d(tmp_path)
    data = Path(entry["image"]).read_bytes()
    Path(entry["image"]).write_bytes(data[: len(data) // 2])
    message = _raises([entry])
    assert message.startswith(f"datalist entry 0: image {entry['image']} is truncated")


def test_truncated_nifti_gz_label(tmp_path: Path) -> None:
    entry = _pair_3d(tmp_path)
    data = Path(entry["label"]).read_bytes()
    Path(entry["label"]).write_bytes(data[: len(data) - 20])
    message = _raises([entry])
    assert message.startswith(f"datalist entry 0: label {entry['label']} ")
    assert "truncated" in message


def test_truncated_uncompressed_nifti_image(tmp_path: Path) -> None:
    entry = _pair_3d(tmp_path)
    image = _nifti(tmp_path / "imagesTr" / "raw.nii", np.ones((16, 16, 8), np.float32))
    Path(image).write_bytes(Path(image).read_bytes()[:1000])
    entry["image"] = image
    message = _raises([entry])
    assert message.startswith(f"datalist entry 0: image {image} is truncated: 1000 of ")


def test_multi_member_gzip_nifti_is_valid(tmp_path: Path) -> None:
    """A .nii.gz whose gzip trailer does not give the full size is decompressed to check it."""
    entry = _pair_3d(tmp_path)
    raw = gzip.decompress(Path(entry["image"]).read_bytes())
    Path(entry["image"]).write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    assert check_datalist([entry]) == [entry]


def test_shape_mismatch_2d(tmp_path: Path) -> None:
    entry = _pair_2d(tmp_path, shape=(32, 32))
    entry["label"] = _png(tmp_path / "labelsTr" / "small.png", _mask((32, 24)))
    message = _raises([entry])
    assert message == (
        f"datalist entry 0: label {entry['label']} has spatial shape (32, 24) but image {entry['image']} has (32, 32)"
    )


def test_shape_mismatch_3d(tmp_path: Path) -> None:
    entries = [_pair_3d(tmp_path, "a"), _pair_3d(tmp_path, "b")]
    entries[1]["label"] = _nifti(tmp_path / "labelsTr" / "c.nii.gz", _mask((16, 16, 7)))
    message = _raises(entries)
    assert message == (
        f"datalist entry 1: label {entries[1]['label']} has spatial shape (16, 16, 7) "
        f"but image {entries[1]['image']} has (16, 16, 8)"
    )


def test_non_binary_label_2d(tmp_path: Path) -> None:
    entry = _pair_2d(tmp_path)
    label = _mask((32, 32), high=255)
    label[0, 0], label[0, 1] = 3, 7
    entry["label"] = _png(tmp_path / "labelsTr" / "a.png", label)
    message = _raises([entry], label_values=[0, 255])
    expected = f"datalist entry 0: label {entry['label']} has values {{3, 7}} outside the declared classes [0, 255]"
    assert message == expected
    # the same mask is also wrong for the default classes (0, 1)
    assert "has values {3, 7, 255} outside the declared classes [0, 1]" in _raises([entry])


def test_non_binary_label_3d_lists_at_most_five(tmp_path: Path) -> None:
    entry = _pair_3d(tmp_path)
    label = np.arange(16 * 16 * 8, dtype=np.float32).reshape(16, 16, 8) % 9
    entry["label"] = _nifti(tmp_path / "labelsTr" / "many.nii.gz", label)
    message = _raises([entry])
    assert message == (
        f"datalist entry 0: label {entry['label']} has values {{2, 3, 4, 5, 6, ... (7 in all)}} "
        "outside the declared classes [0, 1]"
    )
    assert check_datalist([entry], label_values=range(9)) == [entry]
    assert check_datalist([entry], label_values=None) == [entry]


def test_the_pre_flight_summary_counts_entries_outside_dataset_dir(tmp_path, caplog):
    import logging

    from lightvessel_monai.data.checks import count_outside

    inside = tmp_path / "data"
    (inside / "sub").mkdir(parents=True)
    entries = [
        {"image": str(inside / "a.png"), "label": str(inside / "sub" / "a.png")},
        {"image": str(tmp_path / "elsewhere.png"), "label": str(inside / "b.png")},
        {"image": str(inside / ".." / "escaped.png"), "label": str(inside / "c.png")},  # '..' leaves the folder
    ]
    with caplog.at_level(logging.INFO, logger="lightvessel_monai.data.checks"):
        assert count_outside(entries, inside) == 2
    assert f"3 entries checked, 2 of them read from outside {inside.resolve()}" in caplog.text


# ------------------------------------------------------------------------------ channels and patch size


@pytest.mark.parametrize("mode, channels", [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4), ("P", 1), ("I;16", 1)])
def test_image_channels_are_counted_from_the_file(tmp_path: Path, mode: str, channels: int) -> None:
    entry = _pair_2d(tmp_path)
    path = tmp_path / "imagesTr" / f"{mode.replace(';', '')}.png"
    Image.new(mode, (32, 32)).save(path)
    entry["image"] = str(path)
    assert check_datalist([entry], image_channels=channels) == [entry]
    wrong = 1 if channels != 1 else 3
    message = _raises([entry], image_channels=wrong)
    assert message == (
        f"datalist entry 0: image {path} has {channels} channels where {wrong} are expected "
        "(image_channels, which defaults to in_channels)"
    )


def test_a_multi_file_image_sums_its_channels(tmp_path: Path) -> None:
    entry = _pair_2d(tmp_path)  # an RGB image
    grey = _png(tmp_path / "imagesTr" / "grey.png", np.zeros((32, 32), np.uint8))
    entry["image"] = [entry["image"], grey]
    assert check_datalist([entry], image_channels=4) == [entry]
    assert "has 4 channels (3 + 1 over its files) where 2 are expected" in _raises([entry], image_channels=2)


def test_a_label_must_hold_one_channel(tmp_path: Path) -> None:
    entry = _pair_2d(tmp_path)
    rgba = np.zeros((32, 32, 4), np.uint8)
    entry["label"] = _png(tmp_path / "labelsTr" / "rgba.png", rgba)
    for values in ([0, 1], None):  # with and without the value check (two different readers)
        message = _raises([entry], label_values=values)
        assert (
            message
            == f"datalist entry 0: label {entry['label']} has 4 channels; a label must hold one channel of classes"
        )


def test_nifti_channels_are_not_judged(tmp_path: Path) -> None:
    # a (X, Y, 8) NIfTI may be 8 slices or 8 channels (LVSD300's 2.5D input): the file does not say which
    entry = _pair_3d(tmp_path)
    assert check_datalist([entry], image_channels=7) == [entry]


def test_an_image_smaller_than_the_patch_2d(tmp_path: Path) -> None:
    entry = _pair_2d(tmp_path, shape=(32, 48))
    assert check_datalist([entry], min_shape=[32, 48]) == [entry]
    message = _raises([entry], min_shape=[32, 64])
    assert message == (
        f"datalist entry 0: image {entry['image']} has spatial shape (32, 48), smaller than the training patch "
        "(32, 64) in dim 1: lower patch_size or use larger images"
    )


def test_an_image_smaller_than_the_patch_3d(tmp_path: Path) -> None:
    entry = _pair_3d(tmp_path)  # (16, 16, 8)
    assert check_datalist([entry], min_shape=[16, 16, 8]) == [entry]
    assert "(16, 16, 8), smaller than the training patch (16, 16, 16) in dim 2" in _raises(
        [entry], min_shape=[16, 16, 16]
    )
    # a 2D patch over a (X, Y, channels) NIfTI compares the leading dims only
    assert check_datalist([entry], min_shape=[16, 16]) == [entry]
