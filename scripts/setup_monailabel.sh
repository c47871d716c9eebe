#!/usr/bin/env bash
# Creates .venv-monailabel: MONAI Label 0.8.5 beside this project, CPU only, no CUDA packages.
# Usage (from anywhere): bash scripts/setup_monailabel.sh        Idempotent: a second run installs nothing new.
#
# Why not a plain `pip install monailabel==0.8.5`:
#  - monailabel requires `sam2` (a source distribution whose isolated build environment asks for a plain `torch`,
#    i.e. a multi-GB CUDA build) and `monai[torchvision]`; PyPI's torchvision is built against CUDA torch and does not
#    import beside the CPU torch 2.13.0 ("operator torchvision::nms does not exist"). So monailabel is installed with
#    --no-deps and its requirements are listed below without sam2, torchvision, numpymaxflow (scribbles apps only, a
#    source build), mlflow, openslide and lmdb (pathology / experiment tracking, not used by the monaibundle app).
#    monailabel.transform.post imports torchvision.utils at module level (every bundle inference task imports it), so a
#    .pth file puts scripts/monailabel_shims (a stand-in torchvision whose two functions raise) at the END of the venv's
#    sys.path; nothing the monaibundle app runs for this bundle calls them. A real torchvision, if installed, wins.
#  - pip then reports monailabel's missing ninja/numpymaxflow/sam2 and pydicom-seg's jsonschema<4 (this project needs
#    jsonschema>=4; pydicom-seg is only used for DICOM-SEG output): expected, not errors.
#  - torch==2.13.0 is installed first (the local CPU wheel) and pinned in scripts/monailabel-constraints.txt, with
#    numpy==1.26.4 (monailabel needs numpy < 2) and the project's own pins (monai 1.6.1, pytorch-ignite 0.5.5).
#  - This project is installed editable with its dependencies (`pip install -e .`): they all resolve under these pins.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-monailabel"
C="$ROOT/scripts/monailabel-constraints.txt"
PY="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

"${PIP[@]}" install -c "$C" torch==2.13.0
"${PIP[@]}" install -c "$C" --no-deps monailabel==0.8.5
"${PIP[@]}" install -c "$C" \
  numpy 'monai[fire,ignite,itk,nibabel,pillow,psutil,skimage,tensorboard,tqdm]' \
  'uvicorn>=0.29.0' 'pydantic>=2.7.0' 'pydantic-settings>=2.2.1' 'python-dotenv>=1.0.1' 'fastapi>=0.110.2' \
  'python-multipart>=0.0.9' 'httpx>=0.27.0' 'schedule>=1.2.1' 'dicomweb-client[gcp]>=0.59.1' 'timeloop>=1.0.2' \
  'expiringdict>=1.2.2' 'expiring_dict>=1.1.0' 'cachetools>=5.3.3' 'watchdog>=4.0.0' 'pydicom>=2.4.4' \
  'pydicom-seg>=0.4.1' 'pynetdicom>=2.0.2' 'pynrrd>=1.0.0' 'girder-client>=3.2.3' 'einops>=0.7.0' 'pyyaml>=6.0.1' \
  'filelock>=3.11.0' 'passlib>=1.7.4' 'pyjwt>=2.8.0' 'bcrypt>=4.1.2' 'shapely>=2.0.4' 'requests>=2.31.0' \
  'requests-toolbelt>=1.0.0' 'urllib3>=2.2.1' scikit-learn scipy 'google-auth>=2.29.0' pytest
"${PIP[@]}" install -c "$C" -e "$ROOT"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT/scripts/monailabel_shims" > "$SITE/zz_lightvessel_torchvision_shim.pth"

if "$VENV/bin/python" -m pip list 2>/dev/null | grep -i -E '^nvidia|^torchvision|^sam2'; then
  echo "setup_monailabel.sh: unexpected CUDA/torchvision/sam2 packages in $VENV" >&2
  exit 1
fi
"$VENV/bin/python" -c "import torch, numpy, monai, monailabel, lightvessel_monai, monailabel.tasks.infer.bundle; \
print('torch', torch.__version__, 'numpy', numpy.__version__, 'monai', monai.__version__, 'monailabel', monailabel.__version__)"
