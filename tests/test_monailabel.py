"""MONAI Label integration (issue 12): a real ``monailabel start_server`` with the monaibundle sample app and this
bundle, driven over HTTP.

Runs only with ``LIGHTVESSEL_MONAILABEL=1`` and ``.venv-monailabel`` made by ``bash scripts/setup_monailabel.sh``:

    LIGHTVESSEL_MONAILABEL=1 .venv/bin/python -m pytest -q -k monailabel tests/test_monailabel.py

The server, the student's pre-training and everything bundle-side run with ``.venv-monailabel/bin/python``; this test
process only writes files and speaks HTTP.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-monailabel"
PYTHON = VENV / "bin" / "python"
MONAILABEL = VENV / "bin" / "monailabel"
MODEL = "lightvessel_segmentation"  # "segmentation" in the name: BundleInferTask's type is then segmentation
SIZE = 128
STUDY_SEEDS = [9001, 9002, 9003]
# Pre-training of the student (no teacher) on tiny synthetic data: epochs and the Dice it reaches on the studies.
PRETRAIN_EPOCHS = 40
DICE_THRESHOLD = 0.8  # measured: 0.91-0.95 after 40 epochs (14 s here)
# Tiny sizes for everything bundle-side. BundleTrainTask forwards from the request only max_epochs, the datalist,
# device and train#handlers (and a bundle's displayable_configs), so the rest is set in the copied bundle's train.json.
TINY = {
    "synthetic": {"num_train": 8, "num_val": 2, "size": SIZE},
    "image_size": [SIZE, SIZE],
    "patch_size": [64, 64],
    "batch_size": 4,
    "samples_per_image": 2,
    "teacher_max_epochs": 1,
    "val_interval": 1,
    "latency_repeats": 1,
    "progress_bar": False,
}

pytestmark = pytest.mark.skipif(
    os.environ.get("LIGHTVESSEL_MONAILABEL") != "1",
    reason="MONAI Label integration: set LIGHTVESSEL_MONAILABEL=1 "
    "(it needs .venv-monailabel: bash scripts/setup_monailabel.sh)",
)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        BUNDLE_DOWNLOAD_SRC="local",  # never the model zoo: the bundle is found in <app>/model/<name>
        PATH=f"{VENV / 'bin'}:{env.get('PATH', '')}",
        MONAILABEL_PYEXE=str(PYTHON),  # bin/monailabel is a shell script that runs `python -m monailabel.main`
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred > 0, truth > 0
    return float(2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum()))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None, timeout=600):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read(), dict(r.headers)


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """app/ (the monaibundle sample app, with this bundle as model/<MODEL>, its student pre-trained briefly) and
    studies/ (synthetic angiograms, their truth kept aside)."""
    if not PYTHON.exists():
        pytest.fail(f"{PYTHON} is missing: run `bash scripts/setup_monailabel.sh` first")
    from lightvessel_monai.data.synthetic_2d import generate_angiogram

    tmp = tmp_path_factory.mktemp("monailabel")
    app = tmp / "app"
    subprocess.run(
        [str(MONAILABEL), "apps", "--download", "--name", "monaibundle", "--output", str(app)],
        check=True,
        env=_env(),
        capture_output=True,
    )
    app = app / "monaibundle" if (app / "monaibundle" / "main.py").is_file() else app
    assert (app / "main.py").is_file(), sorted(p.name for p in app.iterdir())

    bundle = app / "model" / MODEL
    shutil.copytree(ROOT / "bundle", bundle, ignore=shutil.ignore_patterns("models", "eval", "data", "runs"))
    train_json = bundle / "configs" / "train.json"
    config = json.loads(train_json.read_text())
    config.update(TINY)
    train_json.write_text(json.dumps(config, indent=4))

    # The student alone (configs/methods/none.json: no teacher, no distillation), briefly, so that /infer has something
    # to infer with (BundleInferTask ignores a bundle without models/model.pt).
    t0 = time.monotonic()
    pre = subprocess.run(
        [str(PYTHON), "-m", "monai.bundle", "run", "--config_file",
         str([str(train_json), str(ROOT / "configs" / "methods" / "none.json")]), "--meta_file",
         str(bundle / "configs" / "metadata.json"), "--bundle_root", str(bundle), "--max_epochs", str(PRETRAIN_EPOCHS)],
        cwd=bundle, env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert pre.returncode == 0, pre.stdout[-3000:] + pre.stderr[-3000:]
    print(f"student pre-training: {time.monotonic() - t0:.0f} s")
    assert (bundle / "models" / "model.pt").is_file()
    shutil.rmtree(bundle / "models" / "resume", ignore_errors=True)
    assert not list((bundle / "models").glob("teacher/stage_*/*.pt"))  # no teacher cached: the train test relies on it

    studies = tmp / "studies"
    studies.mkdir()
    truth = {}
    for seed in STUDY_SEEDS:
        image, mask = generate_angiogram(seed, size=SIZE)
        name = f"angio_{seed}"
        image = np.asarray(image)
        image8 = image if image.dtype == np.uint8 else np.clip(image * 255 if image.max() <= 1 else image, 0, 255)
        Image.fromarray(image8.astype(np.uint8)).save(studies / f"{name}.png")
        truth[name] = (np.asarray(mask) > 0).astype(np.uint8) * 255
    return {"app": app, "bundle": bundle, "studies": studies, "truth": truth}


@pytest.fixture(scope="module")
def server(workspace):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workspace["app"].parent / "server.log", "w")  # noqa: SIM115
    cmd = [
        str(MONAILABEL), "start_server", "--app", str(workspace["app"]), "--studies", str(workspace["studies"]),
        "--host", "127.0.0.1", "--port", str(port),
        "--conf", "models", MODEL, "--conf", "zoo_source", "local", "--conf", "sam2", "false",
        "--conf", "preload", "false",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited {proc.returncode}:\n{_tail(log.name)}")
            try:
                _request(f"{url}/info/", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not answer in 300 s:\n{_tail(log.name)}")
                time.sleep(2)
        yield {"url": url, "log": log.name, **workspace}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def _tail(path: str, n: int = 4000) -> str:
    return Path(path).read_text(errors="replace")[-n:]


def test_monailabel_info_lists_the_model(server):
    _, body, _ = _request(f"{server['url']}/info/")
    info = json.loads(body)
    assert MODEL in info["models"], (sorted(info["models"]), _tail(server["log"]))
    assert info["models"][MODEL]["type"] == "segmentation"
    assert info["models"][MODEL]["labels"] == {"vessel": 1}
    assert info["models"][MODEL]["dimension"] == 2
    assert MODEL in info["trainers"]


def test_monailabel_infer_returns_a_mask_of_the_image_size(server):
    dices = {}
    for name, truth in server["truth"].items():
        _, body, headers = _request(f"{server['url']}/infer/{MODEL}?image={name}&output=image", method="POST")
        label = np.asarray(Image.open(io.BytesIO(body)))
        assert label.shape == truth.shape, (label.shape, truth.shape, headers)
        assert set(np.unique(label).tolist()) <= {0, 1}, np.unique(label)
        dices[name] = _dice(label, truth)
    print(f"/infer Dice vs synthetic truth: {dices}")
    assert min(dices.values()) > DICE_THRESHOLD, dices


def test_monailabel_train_distils_and_updates_the_model(server):
    names = sorted(server["truth"])[:2]
    for name in names:
        body, headers = _multipart({"params": "{}"}, {"label": (f"{name}.png", _png(server["truth"][name]))})
        status, _, _ = _request(f"{server['url']}/datastore/label?image={name}&tag=final", "PUT", body, headers)
        assert status == 200
    _, body, _ = _request(f"{server['url']}/datastore/?output=stats")
    stats = json.loads(body)
    assert stats["completed"] == 2, stats

    model_pt = server["bundle"] / "models" / "model.pt"
    before = _sha(model_pt)
    _train(server)
    assert _sha(model_pt) != before, "model.pt did not change"
    # The bundle's run starts with TeacherStage.ensure(): no teacher was cached, so MONAI Label's train task trained
    # one (on the datastore's labels, teacher_max_epochs) and cached it, then distilled the student (FSD + ASD).
    log = Path(server["log"]).read_text(errors="replace")
    assert "training the teacher first" in log, _tail(server["log"], 8000)
    assert "loss_fsd" in log and "loss_asd" in log, _tail(server["log"], 8000)
    teacher = server["bundle"] / "models" / "teacher"
    cached = sorted(teacher.glob("teacher_*.pt"))
    assert len(cached) == 1, sorted(p.relative_to(server["bundle"]) for p in (server["bundle"] / "models").rglob("*"))
    teacher_sha, student_sha = _sha(cached[0]), _sha(model_pt)

    # A second train reuses that teacher (its cache key is the bundle's own datalist, not the datastore's labels).
    _train(server)
    log = Path(server["log"]).read_text(errors="replace")
    assert "reusing the cached teacher" in log, _tail(server["log"], 8000)
    assert sorted(teacher.glob("teacher_*.pt")) == cached and _sha(cached[0]) == teacher_sha
    assert _sha(model_pt) != student_sha, "model.pt did not change on the second train"


def _train(server) -> None:
    request = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False, "pretrained": True}
    status, body, _ = _request(
        f"{server['url']}/train/{MODEL}", "POST", json.dumps(request).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, body
    deadline = time.monotonic() + 900
    while True:
        _, body, _ = _request(f"{server['url']}/train/")
        task = json.loads(body)
        if task.get("status") not in ("SUBMITTED", "RUNNING", "QUEUED"):
            break
        assert time.monotonic() < deadline, task
        time.sleep(2)
    assert task["status"] == "DONE", (task, _tail(server["log"], 8000))
