"""How much of a model's output lies on the collimator edge, and what the field of view does about it (XCA, issue 26).

Usage::

    python benchmarks/bench_field_of_view.py --data configs/data/xca.json \\
        --model "teacher=teacher_def=runs/fov_after/teacher.pt" \\
        --model "none s0=network_def=runs/fov_after/none_seed0/models/model.pt" ... \\
        [--old_data /path/to/old/configs/data/xca.json --old_model "teacher=teacher_def=..." ...] \\
        [--fills] [--figure docs/images/field_of_view_masks.png]

Every model is scored on the validation angiograms of its data overlay (``--data`` for ``--model``, ``--old_data``
for ``--old_model``: the preprocessing a model was trained with), over the whole image, in two ways:

* ``raw``: the argmax of the network, nothing removed;
* ``field``: the same, set to background outside the exposed field that
  :class:`lightvessel_monai.data.field_of_view.XrayFieldOfViewd` finds with ``--data``'s settings (what the bundle's
  post-processing now does).

Columns: Dice, sensitivity, the count of false-positive connected components (8-connected predicted components that
touch no labelled pixel), and the share of predicted vessel pixels in the **edge band**, defined independently of
the product's own field mask as in the issue: within ``--band`` px of the dark surround (raw grey <= 25, opened by
a 2 px disc) or of the image border; the band is split into its collimator part and its image-border part, and the
image-border part's precision (labelled share of what is predicted there) says whether that output is wrong.
``--set KEY=VALUE`` overrides a key of ``--data`` for the ``--model`` networks only, e.g.
``--set inferer#padding_mode=constant`` scores them with the zero-padded sliding window used before.
``trained with``: ``after`` for ``--model`` (``--data``), ``before`` for ``--old_model`` (``--old_data``).

``--fills`` prints a second table, about the network's input only: for each fill method of
:class:`~lightvessel_monai.data.field_of_view.FillOutsided`, the largest and the 99th percentile of the input's
gradient magnitude (central differences, standardised units): the median and 90th percentile on the field's boundary
ring (2 px either side), against the same inside the field, per frame, then the median over the frames that have a
surround (the ring's largest values are where vessels cross the boundary, in every method; a step all along the edge
shows in the ring's median).

``--figure PATH`` draws the field (green contour) and the margin's outer edge (the surround, red contour) that
``--data``'s settings find on a few frames: XCA angiograms with and without a dark surround, ARCADE angiograms
(another hospital) and the middle frame of each XA cine run in ``../shared/data/XA_DICOM_phantom_cine``
(JPEG Lossless, decoded through pydicom's pylibjpeg plugin).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from PIL import Image
from scipy import ndimage

from lightvessel_monai.checkpoints import load_state_dict_checked
from lightvessel_monai.data.checks import load_datalist
from lightvessel_monai.data.field_of_view import FILL_METHODS, xray_field_of_view

REPO = Path(__file__).resolve().parent.parent


def parser_for(data: str, overrides: dict | None = None) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundle/configs/train.json"), data])
    parser["bundle_root"] = str(REPO / "bundle")
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON where it parses (``[320,320]``, ``0.5``) and as a string otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def edge_bands(raw: np.ndarray, band: int) -> tuple[np.ndarray, np.ndarray]:
    """(collimator band, image-border band): pixels within ``band`` px of the dark surround / of the image border."""
    disc = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), 2)
    dark = ndimage.binary_opening(raw <= 25, structure=disc)
    collimator = ndimage.distance_transform_edt(~dark) <= band if dark.any() else np.zeros(raw.shape, bool)
    h, w = raw.shape
    rows, cols = np.mgrid[:h, :w]
    border = np.minimum.reduce([rows, cols, h - 1 - rows, w - 1 - cols]) < band
    return collimator, border & ~collimator


def false_positive_components(pred: np.ndarray, label: np.ndarray) -> int:
    labels, count = ndimage.label(pred, structure=np.ones((3, 3)))
    if count == 0:
        return 0
    hit = np.unique(labels[label & pred])
    return int(count - np.count_nonzero(hit))


def field_of(parser: ConfigParser, raw: np.ndarray) -> np.ndarray:
    """The field with the overlay's settings (the defaults of XrayFieldOfViewd where the overlay has none)."""
    return xray_field_of_view(
        raw,
        float(parser.get("collimator_threshold", 25.0)),
        int(parser.get("field_opening_radius", 4)),
        int(parser.get("field_margin", 6)),
    )[0]


@torch.no_grad()
def score(
    data: str, network_key: str, weights: str, field_parser: ConfigParser, band: int, overrides: dict | None = None
) -> dict[str, list]:
    parser = parser_for(data, overrides)
    network = parser.get_parsed_content(network_key)
    load_state_dict_checked(network, weights, what=network_key)
    network.eval()
    inferer = parser.get_parsed_content("validate#inferer")
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    out: dict[str, list] = {}
    for item in load_datalist(parser.get_parsed_content("datalist_file"), "validation"):
        d = preprocessing(dict(item))
        pred = inferer(d["image"][None], network)[0].argmax(0).numpy().astype(bool)
        label = np.asarray(d["label"][0]) > 0
        raw = np.asarray(Image.open(item["image"]).convert("L"), dtype=np.float64).T  # PILReader: width first
        field = field_of(field_parser, raw)
        collimator, border = edge_bands(raw, band)
        for mode, p in (("raw", pred), ("field", pred & field)):
            tp = np.count_nonzero(p & label)
            row = {
                "dice": 2 * tp / max(1, np.count_nonzero(p) + np.count_nonzero(label)),
                "sensitivity": tp / max(1, np.count_nonzero(label)),
                "fp_components": false_positive_components(p, label),
                "band_collimator": np.count_nonzero(p & collimator) / max(1, np.count_nonzero(p)),
                "band_border": np.count_nonzero(p & border) / max(1, np.count_nonzero(p)),
                # is the border band's output wrong? the labelled share of it (the arteries do leave the frame)
                "border_precision": np.count_nonzero(p & border & label) / max(1, np.count_nonzero(p & border)),
            }
            for key, value in row.items():
                out.setdefault(f"{mode}_{key}", []).append(value)
    return out


def fill_table(data: str) -> None:
    print("\n| fill | boundary ring: median gradient | p90 | field interior: median | p90 | frames |")
    print("|---|---|---|---|---|---|")
    base = parser_for(data)
    items = load_datalist(base.get_parsed_content("datalist_file"), "training") + load_datalist(
        base.get_parsed_content("datalist_file"), "validation"
    )
    for method in ("zero (before)",) + FILL_METHODS:
        if method == "zero (before)":  # the old recipe: threshold mask, 0 outside, no margin
            overrides = {"field_fill": "zero", "field_margin": 0, "field_opening_radius": 0}
        else:
            overrides = {"field_fill": method}
        preprocessing = parser_for(data, overrides).get_parsed_content("validate#preprocessing")
        ring_med, ring_p90, inner_med, inner_p90, frames = [], [], [], [], 0
        for item in items:
            d = preprocessing({"image": item["image"]})
            field = np.asarray(d["fov"][0]) > 0
            if field.all():
                continue
            frames += 1
            x = np.asarray(d["image"][0], dtype=np.float64)
            grad = np.hypot(*np.gradient(x))
            ring = ndimage.binary_dilation(field, iterations=2) & ~ndimage.binary_erosion(field, iterations=2)
            inner = ndimage.binary_erosion(field, iterations=8)
            ring_med.append(np.median(grad[ring]))
            ring_p90.append(np.percentile(grad[ring], 90))
            inner_med.append(np.median(grad[inner]))
            inner_p90.append(np.percentile(grad[inner], 90))
        m = [statistics.median(v) for v in (ring_med, ring_p90, inner_med, inner_p90)]
        print(f"| {method} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.2f} | {frames} |")


FIGURE_FRAMES = [
    "XCA_coronary_vessels/training/35.png",
    "XCA_coronary_vessels/training/1.png",
    "XCA_coronary_vessels/training/40.png",
    "ARCADE_stenosis/val/images/11.png",
    "ARCADE_stenosis/val/images/110.png",
    "ARCADE_stenosis/val/images/1.png",
    "XA_DICOM_phantom_cine/IM1",
    "XA_DICOM_phantom_cine/IM6",
]


def grey_frame(path: Path) -> np.ndarray:
    """A frame as (width, height) grey values, as MONAI's readers lay it out; a cine run gives its middle frame."""
    if path.suffix == ".png":
        return np.asarray(Image.open(path).convert("L"), dtype=np.float64).T
    import pydicom

    frames = pydicom.dcmread(path).pixel_array
    return np.asarray(frames[len(frames) // 2] if frames.ndim == 3 else frames, dtype=np.float64).T


def draw_figure(field_parser: ConfigParser, data_dir: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [data_dir / f for f in FIGURE_FRAMES if (data_dir / f).exists()]
    if not frames:
        raise SystemExit(f"--figure: none of the frames is under {data_dir}")
    cols = 4
    rows = -(-len(frames) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, frame in zip(axes.flat, frames, strict=False):
        raw = grey_frame(frame)
        field, surround = xray_field_of_view(
            raw,
            float(field_parser.get("collimator_threshold")),
            int(field_parser.get("field_opening_radius")),
            int(field_parser.get("field_margin")),
        )
        ax.imshow(raw.T, cmap="gray", vmin=0, vmax=255)
        if not field.all():
            ax.contour(field.T.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
        if surround.any():
            ax.contour(surround.T.astype(float), levels=[0.5], colors="red", linewidths=0.8)
        name = "/".join(frame.parts[-3:] if frame.suffix == ".png" else frame.parts[-2:])
        ax.set_title(f"{name}\nfield {field.mean():.1%}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def parse_model(spec: str) -> tuple[str, str, str]:
    name, key, weights = spec.split("=", 2)
    if key not in ("network_def", "teacher_def"):
        raise SystemExit(f"--model {spec!r}: the middle part must be network_def or teacher_def")
    return name, key, weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO / "configs/data/xca.json"))
    ap.add_argument("--model", action="append", default=[], help="NAME=network_def|teacher_def=WEIGHTS")
    ap.add_argument("--old_data", help="the data overlay the --old_model networks were trained with")
    ap.add_argument("--old_model", action="append", default=[], help="as --model, scored with --old_data")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a key of --data for the --model networks, e.g. inferer#padding_mode=constant",
    )
    ap.add_argument("--band", type=int, default=8)
    ap.add_argument("--fills", action="store_true", help="also compare the fill methods on the network input")
    ap.add_argument("--figure", type=Path, help="draw the field found on a few frames of ../shared/data here")
    args = ap.parse_args()
    overrides = dict(parse_setting(kv) for kv in args.set)
    field_parser = parser_for(args.data)
    groups = [("after", args.data, m) for m in args.model] + [("before", args.old_data, m) for m in args.old_model]
    cols = ["dice", "sensitivity", "fp_components", "band_collimator", "band_border", "border_precision"]
    if groups:
        print(f"XCA validation angiograms, band {args.band} px; mean over cases")
        print(
            "| model | trained with | post-processing | Dice | sensitivity | FP components | in collimator band "
            "| in border band | border band precision |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
    for overlay, data, spec in groups:
        name, key, weights = parse_model(spec)
        result = score(data, key, weights, field_parser, args.band, overrides if overlay == "after" else None)
        for mode in ("raw", "field"):
            v = [statistics.fmean(result[f"{mode}_{c}"]) for c in cols]
            print(
                f"| {name} | {overlay} | {mode} | {v[0]:.4f} | {v[1]:.4f} | {v[2]:.1f} | {100 * v[3]:.2f} % "
                f"| {100 * v[4]:.2f} % | {100 * v[5]:.1f} % |"
            )
    if args.fills:
        fill_table(args.data)
    if args.figure:
        draw_figure(field_parser, REPO.parent / "shared" / "data", args.figure)


if __name__ == "__main__":
    main()
