"""LVSD300's intensity by study: why the slabs are standardised inside the liver (issue 28).

    python benchmarks/bench_lvsd300_intensity.py [--data_root ../shared/data/LVSD300_liver_vessel_slices]

Per study (the 17-character timestamp prefix of the file names; train/ and vali/ hold different studies): the liver
voxels' mean and standard deviation in the 8-bit slices (the liver is where the liver-masked slices are > 0), the
centre slice's mean vessel grey, and the vessels' contrast (vessel mean minus liver mean, in units of the liver's
sd). Then the same vessel mean after ``lightvessel_monai.data.standardize_inside`` (the overlay's step): in liver sd
units, comparable between studies.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

from lightvessel_monai.data.standardize_inside import standardize_inside

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data_root", default=str(REPO.parent / "shared" / "data" / "LVSD300_liver_vessel_slices"))
    args = ap.parse_args()
    root = Path(args.data_root)
    if not root.is_dir():
        raise SystemExit(f"bench_lvsd300_intensity: no LVSD300 data at {root}")
    rows = defaultdict(list)
    for split in ("train", "vali"):
        for path in sorted((root / split).glob("*.nii.gz")):
            volume = np.asarray(nib.load(path).dataobj)
            slices = np.moveaxis(volume[..., 1:], -1, 0).astype(np.float64)
            vessel = volume[..., 0] > 0
            liver = slices[slices > 0]
            centre = slices[3]
            standardised, _ = standardize_inside(slices / 255.0)
            rows[(split, path.name[:17])].append(
                (
                    liver.mean(),
                    liver.std(),
                    centre[vessel].mean(),
                    (centre[vessel].mean() - liver.mean()) / liver.std(),
                    float(np.asarray(standardised[3])[vessel].mean()),
                )
            )
    print(
        "| split | study | slabs | liver mean grey | liver sd | vessel mean grey | vessel contrast (liver sd) "
        "| vessel mean after StandardizeInsided |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (split, study), values in rows.items():
        cols = [statistics.fmean(v[i] for v in values) for i in range(5)]
        print(
            f"| {split} | {study} | {len(values)} | {cols[0]:.1f} | {cols[1]:.1f} | {cols[2]:.1f} | {cols[3]:.2f} "
            f"| {cols[4]:.2f} |"
        )


if __name__ == "__main__":
    main()
