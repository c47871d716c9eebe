"""The package works when installed, not only from a checkout: a plain (non-editable) install, run elsewhere."""

import json
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO


@pytest.mark.integration
def test_a_non_editable_install_compares_from_outside_the_repository(tmp_path):
    # build and install the wheel into a fresh prefix; its dependencies come from this environment's site-packages
    wheels, prefix, work, source = (tmp_path / name for name in ("wheels", "venv", "elsewhere", "source"))
    # build from a copy of what a source distribution holds, so that the build leaves nothing in the checkout
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for name in ("lightvessel_monai", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "bundle" / "configs", source / "bundle" / "configs")
    shutil.copytree(REPO / "bundle" / "docs", source / "bundle" / "docs")
    shutil.copy(REPO / "bundle" / "LICENSE", source / "bundle" / "LICENSE")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    (wheel,) = wheels.glob("*.whl")
    subprocess.run(
        pip + ["install", "--no-deps", "--ignore-installed", "--prefix", str(prefix), str(wheel)], check=True
    )
    python = prefix / "bin" / "python"
    env = {"PYTHONPATH": sysconfig.get_path("purelib"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    work.mkdir()

    where = subprocess.run(
        [python, "-c", "import lightvessel_monai, lightvessel_monai.pipeline.config_files as r;"
         " print(lightvessel_monai.__file__); print(r.config_root())"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert where[0].startswith(str(prefix)), f"the checkout was imported, not the installed package: {where[0]}"
    assert where[1] == str(prefix / "share" / "lightvessel_monai")

    help_text = subprocess.run(
        [python, "-m", "lightvessel_monai.compare", "--help"], cwd=work, env=env, capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "--config_root" in help_text.stdout

    sets = {
        "synthetic#num_train": 4, "synthetic#num_val": 2, "synthetic#size": 64, "image_size": [64, 64],
        "patch_size": [32, 32], "samples_per_image": 2, "batch_size": 2, "teacher_train#settings#max_epochs": 1,
        "val_interval": 1,
    }  # fmt: skip
    cmd = [python, "-m", "lightvessel_monai.compare", "--methods", "none,kd", "--seeds", "0", "--budget", "2"]
    cmd += ["--output_dir", "out", "--latency_repeats", "1"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    run = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (work / "out" / "results.md").is_file() and (work / "out" / "runs" / "kd_seed0" / "result.json").is_file()
    # the teacher cache and the generated data stay under the output folder
    assert list((work / "out" / "bundle" / "models" / "teacher").glob("teacher_*.pt"))
    assert sorted(p.name for p in work.iterdir()) == ["out"]
