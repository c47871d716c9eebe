"""A MONAI Model Zoo package of the bundle: one self-contained zip, ``<name>_v<version>.zip``.

``python -m lightvessel_monai.export --bundle bundle --out dist/`` writes, under one top-level folder named from the
metadata's ``name`` (it must contain ``segmentation``, the Zoo's convention)::

    configs/        every file of the bundle's configs/ (data/method overlays merged into train.json and inference.json)
    docs/README.md  the model card, generated from the run's report (eval/report.csv, eval/report.md) and metadata
    docs/data_license.txt, LICENSE
    models/model.pt    the student's state dict (loads with ``torch.load(..., weights_only=True)``)
    models/model.ts    made by MONAI's ``python -m monai.bundle ckpt_export`` (TorchScript with the configs embedded)
    models/model.onnx  ``export_onnx`` (opset 18, dynamic batch and spatial axes, checked against PyTorch)
    scripts/           the vendored ``lightvessel_monai`` source
    large_files.yml    only when a file is over 25 MB (it lists them with their MD5)

**Self-contained.** The configs reference ``lightvessel_monai`` (``$import lightvessel_monai``,
``$lightvessel_monai...`` expressions, ``_target_`` paths). At package time the package's source is copied,
unchanged, to ``scripts/lightvessel_monai/``, and ``scripts/__init__.py`` puts ``scripts/`` first on ``sys.path``
when it is imported. Every packaged config whose ``imports`` name ``lightvessel_monai`` gets ``"$import scripts"``
as its first import; MONAI evaluates the ``imports`` in order before any other expression, so every later
``lightvessel_monai`` import and ``_target_`` resolves to the vendored copy. Nothing in the configs or the source is
rewritten (no import prefix to keep in step), so the packaged bundle runs exactly the code this repository runs.
``scripts`` is found the Zoo's way: the bundle folder is the working directory of ``python -m monai.bundle run``
(or is on ``PYTHONPATH``; MONAI Label adds it itself).

**The report.** The model card's numbers (Dice, parameters, CPU latency of teacher and student) are read from the
run's ``eval/report.csv`` and ``eval/report.md``; when the bundle has no report the package is still written and the
card says that no training report was found (and gives no numbers).

**Failure.** Everything is built in a temporary folder and checked (the checkpoint against ``network_def``, the ONNX
and TorchScript files against PyTorch) before the zip is moved into ``--out`` with an atomic rename; on any error
nothing is left in ``--out`` and a :class:`PackageError` (one line) says why.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightvessel_monai.checkpoints import load_state_dict_checked
from lightvessel_monai.errors import LightVesselError
from lightvessel_monai.export.formats import ExportMismatchError, _check, example_input, export_onnx
from lightvessel_monai.files import atomic_write, atomic_write_text, markdown_table

__all__ = ["PackageError", "build_package", "package_name", "LARGE_FILE_BYTES"]

logger = logging.getLogger(__name__)

LARGE_FILE_BYTES = 25 * 1024 * 1024  # the Zoo keeps files over 25 MB out of its repository (large_files.yml)
STANDALONE_CONFIGS = ("train.json", "inference.json")  # read first; the others are overlays on train.json
SCRIPTS_INIT = '''"""The code this bundle's configs reference, vendored at package time (lightvessel_monai, unchanged).

The configs import ``scripts`` first; importing it puts this folder first on ``sys.path``, so that the configs'
``lightvessel_monai`` imports and ``_target_`` paths resolve to the copy in this folder, with no ``pip install``.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
'''


class PackageError(LightVesselError):
    """The bundle cannot be packaged (a missing file, a checkpoint that does not fit, an export that fails)."""


def package_name(meta: Mapping[str, Any], name: str | None = None) -> str:
    """The package's folder name: ``name`` or the metadata's ``name``, lower case, parentheses dropped, ``_``-joined."""
    text = name if name is not None else str(meta.get("name", ""))
    slug = re.sub(r"[^a-z0-9]+", "_", re.sub(r"\([^)]*\)", "", text.lower())).strip("_")
    if "segmentation" not in slug:
        raise PackageError(
            f"the package name '{slug}' must contain 'segmentation' (the Model Zoo's convention): "
            "change metadata.json's name or pass --name"
        )
    return slug


# ---------------------------------------------------------------------------------------------------------- checks


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file, lies under a file, or is in a folder this process cannot write to."""
    if out.exists() and not out.is_dir():
        raise PackageError(f"--out {out} is a file, not a folder")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PackageError(f"--out {out} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PackageError(f"--out {out} is not writable ({existing} does not allow writing)")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise PackageError(f"cannot read {path}: {error}") from error


def _metadata(bundle: Path, meta_overlays: Sequence[Path]) -> dict:
    meta = _read_json(bundle / "configs" / "metadata.json")
    for overlay in meta_overlays:
        meta = _merge(meta, _read_json(overlay))
    version = meta.get("version")
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise PackageError(f"metadata.json: version must be 'MAJOR.MINOR.PATCH', got {version!r}")
    changelog = meta.get("changelog") or {}
    if next(iter(changelog), None) != version:
        raise PackageError(f"metadata.json: the newest changelog entry must be the version {version}")
    return meta


def _merge(base: dict, overlay: Mapping) -> dict:
    """Recursive dict merge (the overlay wins; lists are replaced)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


# --------------------------------------------------------------------------------------------------------- configs


def _parser(files: Sequence[Path]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config([str(f) for f in files])
    except Exception as error:  # a malformed overlay
        raise PackageError(f"cannot read the configs {', '.join(map(str, files))}: {error}") from error
    return parser


def _packaged_config(config: dict) -> dict:
    """``config`` with ``"$import scripts"`` first among its imports when they name ``lightvessel_monai``."""
    imports = config.get("imports")
    if isinstance(imports, list) and any("lightvessel_monai" in str(item) for item in imports):
        config = dict(config, imports=["$import scripts"] + [i for i in imports if i != "$import scripts"])
    return config


def _write_configs(bundle: Path, staging: Path, overlays: Sequence[Path], meta: Mapping) -> None:
    source, target = bundle / "configs", staging / "configs"
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.name == "metadata.json" or not path.is_file():
            continue
        if path.suffix != ".json":
            shutil.copy2(path, target / path.name)
            continue
        if path.name in STANDALONE_CONFIGS:
            config = dict(_parser([path, *overlays]).get())
            if not config.get("_meta_"):
                config.pop("_meta_", None)  # ConfigParser adds an empty one
        else:
            config = _read_json(path)
        packaged = _packaged_config(config)
        if packaged is config and path.name not in STANDALONE_CONFIGS:
            shutil.copy2(path, target / path.name)  # an overlay that needs no change: byte for byte
        else:
            (target / path.name).write_text(json.dumps(packaged, indent=4) + "\n")
    (target / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")


def _packaged_metadata(meta: Mapping, report: dict | None, spatial_shape: list[str] | None) -> dict:
    meta = json.loads(json.dumps(meta))
    packages = dict(meta.get("required_packages_version") or {})
    packages.pop("lightvessel-monai", None)  # vendored in scripts/
    meta["required_packages_version"] = packages
    if report and "student" in report["rows"]:
        meta["eval_metrics"] = {"mean_dice": float(report["rows"]["student"]["dice"])}
    if spatial_shape is not None:
        for fmt in ("network_data_format", "teacher_data_format"):
            for part in ("inputs", "outputs"):
                for item in (meta.get(fmt) or {}).get(part, {}).values():
                    item["spatial_shape"] = list(spatial_shape)
    return meta


# --------------------------------------------------------------------------------------------------------- network


def _student(bundle: Path, overlays: Sequence[Path], checkpoint: Path) -> tuple[nn.Module, Any]:
    parser = _parser([bundle / "configs" / "inference.json", *overlays])
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as error:
        raise PackageError(f"cannot build network_def of {bundle / 'configs' / 'inference.json'}: {error}") from error
    load_state_dict_checked(network, checkpoint, what="student")
    return network.eval(), parser


def _multiples(meta: Mapping) -> list[int] | None:
    """The ``k`` of the metadata's input ``spatial_shape`` entries ``"k*n"``, or None when it is not of that form."""
    shape = (meta.get("network_data_format") or {}).get("inputs", {}).get("image", {}).get("spatial_shape")
    if not isinstance(shape, list):
        return None
    out = []
    for item in shape:
        match = re.fullmatch(r"\s*(\d+)\s*\*\s*n\s*", str(item))
        if not match:
            return None
        out.append(int(match.group(1)))
    return out


def _runs_at(network: nn.Module, in_channels: int, shape: Sequence[int], out_channels: int) -> bool:
    try:
        with torch.no_grad():
            y = network(torch.zeros(1, in_channels, *shape))
    except Exception:
        return False
    return tuple(y.shape) == (1, out_channels, *shape)


def _spatial_multiple(network: nn.Module, spatial_dims: int, in_channels: int, out_channels: int) -> int:
    """The smallest power of two ``k`` for which the network keeps the shape at ``k``, ``2k`` and ``3k`` per axis."""
    for k in (8, 16, 32, 64, 128):
        if all(_runs_at(network, in_channels, [k * n] * spatial_dims, out_channels) for n in (1, 2, 3)):
            return k
    raise PackageError("network_def does not keep the input's spatial shape at any multiple of 8 up to 384")


# --------------------------------------------------------------------------------------------------------- exports


@contextlib.contextmanager
def _stderr_to_file(path: Path):
    """Send file descriptor 2 to ``path`` (torch's C++ ONNX exporter prints the whole graph there on a failure)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("wb") as f:
            os.dup2(f.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _export_onnx(network: nn.Module, path: Path, example: torch.Tensor) -> float:
    try:
        with _stderr_to_file(path.with_name("onnx_export.log")):
            return export_onnx(network, path, example)
    except ExportMismatchError as error:
        raise PackageError(f"ONNX export: {error}") from error
    except Exception as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise PackageError(f"network_def cannot be exported to ONNX: {type(error).__name__}: {first}") from error


def _ckpt_export(staging: Path, network: nn.Module, example: torch.Tensor, timeout: float = 600) -> float:
    """``python -m monai.bundle ckpt_export`` run in the staged package (so the packaged configs and scripts/ are what
    it reads), then the TorchScript file checked against the network on ``example``."""
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", "models/model.ts"]
    cmd += ["--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json"]
    cmd += ["--config_file", "configs/inference.json"]
    env = dict(os.environ, PYTHONPATH="")  # the staged folder (the working directory) and the venv: nothing else
    proc = subprocess.run(cmd, cwd=staging, capture_output=True, text=True, env=env, timeout=timeout)
    path = staging / "models" / "model.ts"
    if proc.returncode != 0 or not path.is_file():
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise PackageError(f"monai.bundle ckpt_export failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        expected, actual = network(example), loaded(example)
    try:
        return _check(path, expected, actual, 1e-5, "TorchScript file")
    except ExportMismatchError as error:
        raise PackageError(str(error)) from error


# ---------------------------------------------------------------------------------------------------------- report


def read_report(eval_dir: Path) -> dict | None:
    """The run's report (``report.csv`` rows by model, and the latency column's header from ``report.md``)."""
    path = eval_dir / "report.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = {row["model"]: row for row in csv.DictReader(f)}
    if not rows or any(not {"dice", "params", "cpu_latency_ms"} <= set(r) for r in rows.values()):
        raise PackageError(f"{path} is not a run report (expected columns model, dice, params, cpu_latency_ms)")
    latency = "median CPU latency (ms)"
    md = eval_dir / "report.md"
    if md.is_file():
        header = md.read_text().splitlines()[0].strip("| ").split(" | ")
        latency = header[-1] if len(header) >= 4 else latency
    return {"rows": rows, "latency": latency, "path": str(path)}


def _raw(parser, value: Any, depth: int = 0) -> Any:
    """A config value with plain ``@id`` references replaced by their raw content (not evaluated)."""
    if isinstance(value, str) and value.startswith("@") and depth < 10:
        try:
            return _raw(parser, parser[value[1:]], depth + 1)
        except Exception:
            return value
    return value


def _describe_network(parser, key: str) -> str:
    config = _raw(parser, parser[key]) if key in parser else None
    if not isinstance(config, Mapping):
        return "not declared"
    args = [f"{k}={_raw(parser, v)!r}" for k, v in config.items() if k != "_target_"]
    return f"`{str(config.get('_target_', '?')).rsplit('.', 1)[-1]}({', '.join(args)})`"


def _method(parser) -> list[str]:
    terms = _raw(parser, parser["distillation"]) if "distillation" in parser else {}
    lines = []
    for name, term in (terms or {}).items():
        term = _raw(parser, term)  # a term may be a reference into a method overlay ("@lightvessel#fsd")
        if not isinstance(term, Mapping):
            continue
        loss = _raw(parser, term.get("loss"))
        target = str(loss.get("_target_", "?")).rsplit(".", 1)[-1] if isinstance(loss, Mapping) else str(loss)
        lines.append(f"- `{name}`: `{target}`, weight {_raw(parser, term.get('weight', 1.0))}")
    return lines


def model_card(
    meta: Mapping, report: dict | None, train_parser, student: nn.Module, overlays: Sequence[Path], latency: str
) -> str:
    """The package's ``docs/README.md``: what the model is, its data, method, numbers (from ``report``) and limits."""
    params = sum(p.numel() for p in student.parameters())
    use_teacher = str(_raw(train_parser, train_parser.get("use_teacher", True))).lower() not in ("false", "0")
    lines = [f"# {meta.get('name', 'model')} (v{meta['version']})", "", str(meta.get("description", "")), ""]
    lines += ["## Task", "", str(meta.get("task", "")), ""]
    lines += ["## Network", ""]
    student_def = _describe_network(train_parser, "network_def")
    lines += [f"- Student (this package's weights): {student_def}, {params:,} parameters."]
    if use_teacher:
        lines += [f"- Teacher it was distilled from: {_describe_network(train_parser, 'teacher_def')} (not shipped)."]
    else:
        lines += ["- No teacher: the student was trained on the labels alone."]
    lines += ["", "## Method", "", "Loss: the segmentation loss plus these weighted distillation terms:", ""]
    lines += _method(train_parser) or ["- none (the student alone)"]
    if overlays:
        lines += ["", "Config overlays merged into `train.json` and `inference.json`: "]
        lines[-1] += ", ".join(f"`{Path(o).name}`" for o in overlays) + "."
    lines += ["", "## Data", ""]
    for key in ("data_source", "data_type", "image_classes", "label_classes", "pred_classes"):
        if meta.get(key):
            lines.append(f"- {key.replace('_', ' ').capitalize()}: {meta[key]}")
    lines += ["- Data license: see `docs/data_license.txt`.", "", "## Results", ""]
    if report is None:
        lines += ["No training report was found (`eval/report.csv` of the bundle): this package gives no measured"]
        lines += ["Dice or latency. Train with the repository's command to produce one, then package again."]
    else:
        header = ["model", "Dice (validation)", "parameters", report["latency"]]
        rows = [
            (model, row["dice"], f"{int(float(row['params'])):,}", row["cpu_latency_ms"])
            for model, row in report["rows"].items()
        ]
        lines += ["From the run's report (`eval/report.csv`):", ""] + markdown_table(header, rows)
        student_row = report["rows"].get("student")
        if student_row and int(float(student_row["params"])) != params:
            lines += ["", f"**Warning:** the report's student has {student_row['params']} parameters, the packaged"]
            lines[-1] += f" network {params:,}: the report is from another run."
    lines += ["", "Exported files, checked against PyTorch on a random input: " + latency, ""]
    lines += ["## Intended use and limits", "", str(meta.get("intended_use", "Research only.")), ""]
    lines += ["- The input must follow `network_data_format` in `configs/metadata.json` (channels, spatial shape)."]
    lines += ["- Metrics hold for data like the validation set above; other scanners or protocols need validation."]
    lines += ["", "## Use", "", "From this folder (the Model Zoo convention; `scripts/` holds the vendored code):", ""]
    lines += ["```bash", "python -m monai.bundle run --config_file configs/inference.json --input_glob 'images/*'"]
    lines += ["```", "", "A 2D bundle also reads multi-frame X-ray angiography DICOM runs (any file name:"]
    lines += ["`--input_glob 'runs/*'`) and writes, per run, a DICOM SEG, a PNG mask per frame and a GIF preview."]
    lines += ["", "`models/model.ts` (TorchScript, `monai.bundle ckpt_export`) and `models/model.onnx`"]
    lines += ["(opset 18, input `image`, output `pred`, dynamic batch and spatial axes) hold the same network.", ""]
    refs = meta.get("references") or []
    if refs:
        lines += ["## References", ""] + [f"- {r}" for r in refs] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- package


def _vendor(staging: Path) -> None:
    import lightvessel_monai

    source = Path(lightvessel_monai.__file__).resolve().parent
    scripts = staging / "scripts"
    shutil.copytree(source, scripts / "lightvessel_monai", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (scripts / "__init__.py").write_text(SCRIPTS_INIT)


def _large_files(staging: Path) -> list[str]:
    large = [p for p in sorted(staging.rglob("*")) if p.is_file() and p.stat().st_size > LARGE_FILE_BYTES]
    if large:
        entries = []
        for p in large:
            md5 = hashlib.md5(p.read_bytes()).hexdigest()
            entries.append(
                f'  - path: "{p.relative_to(staging)}"\n    url: ""\n    hash_val: "{md5}"\n    hash_type: md5'
            )
        (staging / "large_files.yml").write_text("large_files:\n" + "\n".join(entries) + "\n")
    return [str(p.relative_to(staging)) for p in large]


def _zip(staging: Path, folder: str, out: Path, filename: str) -> Path:
    """Zip ``staging`` under ``folder/`` into ``out/filename`` atomically; an ``out`` this call created is removed on
    failure, so an error leaves nothing behind."""

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(staging.rglob("*")):
                if path.is_file():
                    archive.write(path, f"{folder}/{path.relative_to(staging).as_posix()}")

    created = not out.exists()
    try:
        return Path(atomic_write(out / filename, write))
    except BaseException as error:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(error, OSError):
            raise PackageError(f"cannot write the package to {out}: {error}") from error
        raise


def build_package(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    config_overlays: Sequence[str | os.PathLike] = (),
    meta_overlays: Sequence[str | os.PathLike] = (),
    name: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    report_dir: str | os.PathLike | None = None,
) -> Path:
    """Write ``<out>/<name>_v<version>.zip`` from ``bundle`` (see the module docstring) and return its path.

    Args:
        config_overlays: data or method overlays (``configs/data/synthetic_3d.json``), merged in order into the
            packaged ``train.json`` and ``inference.json``.
        meta_overlays: JSON files merged (recursively) into the packaged ``metadata.json``.
        name: the folder name instead of the metadata's ``name``.
        checkpoint: the student checkpoint (default ``<bundle>/models/model.pt``).
        report_dir: where the run's report is (default ``<bundle>/eval``).
    """
    bundle, out = Path(bundle), Path(out)
    overlays = [Path(o) for o in config_overlays]
    _check_out(out)
    for required in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "LICENSE"):
        if not (bundle / required).is_file():
            raise PackageError(f"bundle {bundle} has no {required}")
    for overlay in [*overlays, *map(Path, meta_overlays)]:
        if not overlay.is_file():
            raise PackageError(f"overlay {overlay} does not exist")
    checkpoint = Path(checkpoint) if checkpoint is not None else bundle / "models" / "model.pt"
    if not checkpoint.is_file():
        raise PackageError(f"bundle {bundle} has no trained student: {checkpoint} does not exist")
    data_license = bundle / "docs" / "data_license.txt"
    if not data_license.is_file():
        raise PackageError(f"bundle {bundle} has no docs/data_license.txt")

    meta = _metadata(bundle, [Path(m) for m in meta_overlays])
    folder = package_name(meta, name)
    report = read_report(Path(report_dir) if report_dir is not None else bundle / "eval")
    network, parser = _student(bundle, overlays, checkpoint)
    spatial_dims, in_channels, out_channels = (int(parser[k]) for k in ("spatial_dims", "in_channels", "num_classes"))
    multiples = _multiples(meta)
    spatial_shape = None
    if (
        multiples is None
        or len(multiples) != spatial_dims
        or not all(_runs_at(network, in_channels, [k * n for k in multiples], out_channels) for n in (1, 2))
    ):  # the metadata's spatial_shape is not true for this network (e.g. a 3D overlay): derive it from the network
        k = _spatial_multiple(network, spatial_dims, in_channels, out_channels)
        multiples, spatial_shape = [k] * spatial_dims, [f"{k}*n"] * spatial_dims
        logger.info("spatial_shape of the packaged metadata: %s", spatial_shape)
    target = 128 if spatial_dims == 2 else 64  # an example input of this size per axis checks the exports
    example = example_input(in_channels, [k * max(1, math.ceil(target / k)) for k in multiples])
    train_parser = _parser([bundle / "configs" / "train.json", *overlays])

    with tempfile.TemporaryDirectory(prefix="lightvessel_package_") as tmp:
        staging = Path(tmp) / folder
        (staging / "models").mkdir(parents=True)
        packaged_meta = _packaged_metadata(meta, report, spatial_shape)
        _write_configs(bundle, staging, overlays, packaged_meta)
        shutil.copy2(bundle / "LICENSE", staging / "LICENSE")
        (staging / "docs").mkdir()
        shutil.copy2(data_license, staging / "docs" / "data_license.txt")
        _vendor(staging)
        torch.save(network.state_dict(), staging / "models" / "model.pt")
        onnx_diff = _export_onnx(network, staging / "models" / "model.onnx", example)
        (staging / "models" / "onnx_export.log").unlink()
        ts_diff = _ckpt_export(staging, network, example)
        checked = (
            f"on a {'x'.join(map(str, example.shape[2:]))} input, max abs difference from PyTorch "
            f"{onnx_diff:.2g} (ONNX, onnxruntime) and {ts_diff:.2g} (TorchScript)."
        )
        card = model_card(packaged_meta, report, train_parser, network, overlays, checked)
        atomic_write_text(staging / "docs" / "README.md", card + "\n")
        large = _large_files(staging)
        if large:
            logger.warning("files over 25 MB, listed in large_files.yml: %s", ", ".join(large))
        return _zip(staging, folder, out, f"{folder}_v{meta['version']}.zip")
