"""Vessel calibre in pixels: the XCA annotations against a teacher's masks on ARCADE frames at several zooms (issue 27).

Usage::

    python benchmarks/bench_vessel_calibre.py --teacher bundle/models/teacher/teacher_<fingerprint>.pt \\
        [--zooms 0.5,0.586,0.7,0.85,1.0] [--arcade_frames 40]

The calibre of a mask is the vessel diameter at its centreline: twice the Euclidean distance transform of the mask,
read on its skeleton (``skimage.morphology.skeletonize``), over every centreline pixel of every frame (its 90th
percentile is a column). The table compares:

* the 40 XCA annotations (the scale the student learns);
* the teacher's masks on the 10 XCA validation angiograms (does the teacher's calibre match the annotations'?);
* the teacher's masks on the first ``--arcade_frames`` ARCADE ``val`` frames, preprocessed as XCA frames and then
  zoomed by each ``--zooms`` factor (``unlabeled_zoom``), in zoomed pixels and back in native ARCADE pixels.

The mean width (vessel area over centreline length) is the continuous measure; the centreline diameters are
quantised by the distance transform (2, 4, 4.47, ... px). A second table is teacher-free: the scale of the strongest
dark ridges of the raw frames (:func:`ridge_scales`), XCA against ARCADE at native size. A teacher finds more thin
vessels the larger the frame, which pulls the mean width of all its output down, so the calibre compared is that of
each frame's largest tree (the main artery, 8-connected): the zoom to choose makes it, in zoomed pixels, equal to
the XCA annotations'. A teacher that only knows XCA calibres may bend its masks towards them at every zoom, so the
native-pixel column (which should not depend on the zoom if the teacher were scale-free) says how far the measure
can be trusted."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Zoomd
from PIL import Image
from scipy import ndimage
from skimage.morphology import skeletonize

from lightvessel_monai.checkpoints import load_state_dict_checked
from lightvessel_monai.data.checks import load_datalist

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


def diameters(mask: np.ndarray) -> np.ndarray:
    """Vessel diameters (px) at the centreline pixels of a binary 2D mask."""
    mask = mask.astype(bool)
    if not mask.any():
        return np.zeros(0)
    distance = ndimage.distance_transform_edt(mask)
    return 2.0 * distance[skeletonize(mask)]


def mean_width(masks: list[np.ndarray]) -> float:
    """Vessel area over centreline length, summed over the masks: the mean width (px), not quantised as the EDT is."""
    area = sum(int(m.sum()) for m in masks)
    length = sum(int(skeletonize(m.astype(bool)).sum()) for m in masks)
    return area / max(1, length)


SIGMAS = (1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 10, 12, 14)


def ridge_scales(path: Path, top: float = 0.02, border: int = 16) -> np.ndarray:
    """Teacher-free calibre: the scale-normalised Hessian scale of the strongest dark ridges of a raw grey frame.

    For each sigma, ``sigma^2`` times the largest Hessian eigenvalue (positive across a dark vessel); per pixel the
    sigma of the largest response; returned for the ``top`` share of the strongest pixels, ``border`` px in from the
    frame's edge. The best sigma of a bar is proportional to its width, so the ratio of two sets' sigmas is their
    calibre ratio.
    """
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    image = np.asarray(Image.open(path).convert("L"), dtype=np.float64) / 255.0
    stack = []
    for sigma in SIGMAS:
        hessian = hessian_matrix(image, sigma=sigma, order="rc", use_gaussian_derivatives=False)
        stack.append(sigma * sigma * np.clip(hessian_matrix_eigvals(hessian)[0], 0, None))
    response = np.stack(stack)
    strongest, best = response.max(0), np.asarray(SIGMAS)[response.argmax(0)]
    inside = np.zeros(image.shape, bool)
    inside[border:-border, border:-border] = True
    return best[inside & (strongest >= np.quantile(strongest[inside], 1 - top))]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2D mask (the main artery tree of an angiogram)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def widths(masks: list[np.ndarray]) -> tuple[float, float, float, int]:
    """(mean width, mean width of each frame's largest tree, 90th percentile of the centreline diameters (px),
    centreline pixels)."""
    flat = np.concatenate([diameters(m) for m in masks])
    p90 = float(np.percentile(flat, 90)) if flat.size else float("nan")
    return mean_width(masks), mean_width([largest_component(m) for m in masks]), p90, int(flat.size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="the XCA teacher's weights (teacher_def of configs/data/xca.json)")
    ap.add_argument("--zooms", default="0.5,0.586,0.7,0.85,1.0")
    ap.add_argument("--arcade_frames", type=int, default=40)
    args = ap.parse_args()
    if not (SHARED / "XCA_coronary_vessels").is_dir() or not (SHARED / "ARCADE_stenosis").is_dir():
        raise SystemExit(f"bench_vessel_calibre: needs XCA_coronary_vessels and ARCADE_stenosis under {SHARED}")

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundle/configs/train.json"), str(REPO / "configs/data/xca.json")])
    parser["bundle_root"] = str(REPO / "bundle")
    teacher = parser.get_parsed_content("teacher_def")
    load_state_dict_checked(teacher, args.teacher, what="teacher_def")
    teacher.eval()
    inferer = parser.get_parsed_content("validate#inferer")
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    image_only = parser.get_parsed_content("unlabeled#transform").transforms[0]  # the preprocessing, label-tolerant
    datalist = parser.get_parsed_content("datalist_file")

    @torch.no_grad()
    def predict(image: torch.Tensor) -> np.ndarray:
        return inferer(image[None], teacher)[0].argmax(0).numpy().astype(bool)

    print(
        "| masks | zoom | mean width (px) | largest tree: mean width | in native px | centreline diameter p90 "
        "| centreline px |"
    )
    print("|---|---|---|---|---|---|---|")
    labels = [np.asarray(d["label"][0]) > 0 for d in map(preprocessing, load_datalist(datalist, "training"))]
    validation = [preprocessing(dict(item)) for item in load_datalist(datalist, "validation")]
    labels += [np.asarray(d["label"][0]) > 0 for d in validation]
    for name, masks in (
        ("XCA annotations (40)", labels),
        ("teacher on XCA validation (10)", [predict(d["image"]) for d in validation]),
    ):
        w, tree, p90, n = widths(masks)
        print(f"| {name} | 1 | {w:.2f} | {tree:.2f} | {tree:.2f} | {p90:.2f} | {n} |", flush=True)

    frames = sorted((SHARED / "ARCADE_stenosis/val/images").glob("*.png"), key=lambda p: int(p.stem))
    prepared = [image_only({"image": str(p)}) for p in frames[: args.arcade_frames]]
    size = Image.open(frames[0]).size
    for zoom in (float(z) for z in args.zooms.split(",")):
        zoomer = Zoomd("image", zoom=zoom, mode="area", keep_size=False)
        masks = [predict(zoomer(dict(d))["image"]) for d in prepared]
        w, tree, p90, n = widths(masks)
        side = round(size[0] * zoom)
        print(
            f"| teacher on ARCADE val ({len(prepared)}), {side} px | {zoom:g} | {w:.2f} | {tree:.2f} "
            f"| {tree / zoom:.2f} | {p90:.2f} | {n} |",
            flush=True,
        )
    xca_folder = SHARED / "XCA_coronary_vessels/training"
    xca_frames = sorted((p for p in xca_folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
    print("\n| raw frames | ridge scale sigma: mean | median | quartiles |")
    print("|---|---|---|---|")
    means = {}
    for name, files in (("XCA", xca_frames), ("ARCADE val", frames[: args.arcade_frames])):
        values = np.concatenate([ridge_scales(p) for p in files])
        means[name] = float(values.mean())
        q1, med, q3 = np.percentile(values, [25, 50, 75])
        print(f"| {name} ({len(files)}) | {values.mean():.2f} | {med:g} | {q1:g}–{q3:g} |", flush=True)
    print(f"ridge-scale calibre ratio XCA / ARCADE: {means['XCA'] / means['ARCADE val']:.3f} (the zoom that matches)")
    print(f"\nARCADE frames are {size[0]} x {size[1]}; XCA frames 300 x 300 (zoom 300/512 = {300 / 512:.3f}).")


if __name__ == "__main__":
    main()
