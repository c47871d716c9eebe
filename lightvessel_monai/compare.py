"""Compare distillation methods side by side: same teacher, data split, seeds and iteration budget.

Usage::

    python -m lightvessel_monai.compare --data configs/data/drive.json \\
        --methods none,kd,at,cwd,skd,emkd,dskd,lightvessel --seeds 0,1,2 --budget 240 --output_dir runs/compare_drive

For every method (``configs/methods/<name>.json``) and seed the student is trained in this process from the
bundle config ``bundle/configs/train.json`` + the data overlay + the method overlay, for ``ceil(budget / iterations
per epoch)`` epochs, with the one shared teacher checkpoint (trained first, by the bundle's teacher stage, when no
cached one matches). The final weights (no checkpoint selection on the held-out split) are evaluated on the
validation split of the datalist: Dice, IoU, sensitivity, specificity, accuracy, clDice and HD95, inside the
data overlay's ``eval_mask_key`` (the DRIVE field of view) when set.

Outputs, all under ``--output_dir``: ``results.md`` and ``results.csv`` (mean ± std over seeds, with parameters,
FLOPs and CPU latency), ``runs.csv`` (one row per run), ``dice.png`` (bar chart), ``overlays/case_<i>.png``, and per
run ``runs/<method>_seed<k>/`` with ``model.pt`` and ``result.json``. A run whose ``result.json`` matches the
requested settings is not repeated, so an interrupted comparison resumes where it stopped.

A method may carry its own config overrides, ``<name>+KEY=JSON+KEY=JSON``, to compare variants of one method side by
side with the same ``none`` runs, e.g. ``--methods "none,lightvessel,lightvessel+asd_weight=0.001"``; such a run is
stored under ``runs/<name>+KEY=JSON..._seed<k>/`` and named by its whole spec in every table. With
``--set term_grad_interval=N`` every run also records, every N iterations, the gradient norm of each weighted term on
the student's parameters; ``results.md`` then gets a table of their medians against the segmentation loss's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

from lightvessel_monai.compare_outputs import ComparisonOutputs, run_folder
from lightvessel_monai.errors import ConfigKeyError, exit_code_of
from lightvessel_monai.evaluation import count_flops, cpu_latency_ms, evaluate_cases, mean_over_cases
from lightvessel_monai.networks import count_parameters
from lightvessel_monai.resources import data_overlay, methods_dir, train_config
from lightvessel_monai.utils import (
    atomic_write_text,
    find_bundle_root,
)

__all__ = ["main", "compare", "method_config", "split_methods", "split_variant"]

logger = logging.getLogger("lightvessel_monai.compare")

NEVER_STEP = 10**9  # a validation interval that never fires: runs are evaluated once, after the budget


def split_methods(text: str) -> list[str]:
    """``"none,kd,cwd+cwd_pairs=[1,2]"`` -> ``["none", "kd", "cwd+cwd_pairs=[1,2]"]``: commas inside ``[...]`` or
    ``{...}`` belong to a variant's JSON value, not to the list."""
    return [item.strip() for item in re.split(r",(?![^\[{]*[\]}])", text) if item.strip()]


def split_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``"lightvessel+asd_weight=0.001"`` -> ``("lightvessel", {"asd_weight": 0.001})``; a plain name has none."""
    # a "+" starts a new KEY=JSON only before a key: "1e+3" inside a value stays whole
    method, *items = re.split(r"\+(?=[A-Za-z_][\w#]*=)", spec)
    if "+" in method:
        raise ConfigKeyError(f"--methods: '{method.partition('+')[2]}' in '{spec}' is not KEY=JSON")
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigKeyError(f"--methods: '{item}' in '{spec}' is not KEY=JSON")
        overrides[key] = parse_value(value)
    return method, overrides


def method_config(spec: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The overlay files of a method or variant spec, base first: ``configs/methods/<name>.json``, preceded by the
    overlay it names in ``_extends_`` (``dskd_kd`` extends ``dskd``). An unknown name is a one-line error."""
    name, _ = split_variant(spec)
    folder = methods_dir(root)
    path = folder / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.json"))
        raise ConfigKeyError(f"--methods: unknown method '{name}' (no {path}); known: {', '.join(known)}")
    files = [path]
    while True:
        try:
            base = json.loads(files[0].read_text()).get("_extends_")
        except (OSError, ValueError) as err:
            raise ConfigKeyError(f"--methods: {files[0]} is not a readable JSON overlay ({err})") from None
        if base is None:
            return files
        base_path = folder / str(base)
        if not base_path.is_file() or base_path in files:
            raise ConfigKeyError(f"{files[0]}: _extends_ '{base}' is not another overlay in {folder}")
        files.insert(0, base_path)


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, lists, booleans, null), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser(configs: Sequence[str | os.PathLike], overrides: Mapping[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _fingerprint(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def _model_facts(network: torch.nn.Module, input_shape: Sequence[int], latency_repeats: int) -> dict[str, float]:
    return {
        "params": count_parameters(network),
        "gflops": round(count_flops(network, input_shape) / 1e9, 3),
        "cpu_latency_ms": round(cpu_latency_ms(network, input_shape, repeats=latency_repeats), 1),
    }


class Comparison:
    """The shared state of one comparison: configs, overrides, the teacher checkpoint and the output folder."""

    def __init__(
        self,
        data_config: str | os.PathLike | None,
        output_dir: str | os.PathLike,
        budget: int,
        overrides: Mapping[str, Any] | None = None,
        keep_predictions: int = 2,
        latency_repeats: int = 5,
        verbose: bool = False,
        config_root: str | os.PathLike | None = None,
    ) -> None:
        if budget < 1:
            raise ConfigKeyError(f"--budget must be a positive number of iterations, got {budget}")
        self.config_root = config_root
        self.base_configs = [train_config(config_root)]
        self.base_configs += [data_overlay(data_config, config_root)] if data_config else []
        self.output_dir = Path(output_dir).resolve()
        self.budget = int(budget)
        self.overrides = dict(overrides or {})
        if find_bundle_root(default="") == "" and "bundle_root" not in self.overrides:
            # not run from a checkout's root: the shared teacher cache and generated data go under output_dir
            self.overrides["bundle_root"] = str(self.output_dir / "bundle")
        self.keep_predictions = keep_predictions
        self.latency_repeats = latency_repeats
        self.verbose = verbose
        self.output_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------ the teacher

    def prepare_teacher(self) -> dict[str, Any]:
        """Train (or reuse) the shared teacher and evaluate it like the students."""
        parser = build_parser(self.base_configs, {**self.overrides, "progress_bar": False})
        parser.get_parsed_content("initialize")
        checkpoint = parser.get_parsed_content("teacher_stage").ensure()
        self.teacher_checkpoint = str(Path(checkpoint).resolve())
        datalist = parser.get_parsed_content("train#datalist")
        batch_size = int(parser.get_parsed_content("batch_size"))
        self.iterations_per_epoch = math.ceil(len(datalist) / batch_size)
        self.max_epochs = max(1, math.ceil(self.budget / self.iterations_per_epoch))
        self.input_shape = [1, int(parser.get_parsed_content("in_channels"))] + list(
            parser.get_parsed_content("image_size")
        )
        self.mask_key = parser.get("eval_mask_key", None)
        teacher = parser.get_parsed_content("teacher")  # the stage loaded the checkpoint into it
        rows, preds = self._evaluate(parser, teacher)
        self.cases = self._case_images(parser)
        result = {
            "method": "teacher",
            "checkpoint": self.teacher_checkpoint,
            "metrics": mean_over_cases(rows),
            "cases": rows,
            **_model_facts(teacher, self.input_shape, self.latency_repeats),
        }
        self.teacher_predictions = preds
        _atomic_json(self.output_dir / "teacher.json", result)
        return result

    def _evaluate(self, parser: ConfigParser, network: torch.nn.Module) -> tuple[list[dict], list[np.ndarray]]:
        return evaluate_cases(
            network,
            parser.get_parsed_content("validate#dataloader"),
            device=parser.get_parsed_content("device"),
            inferer=parser.get_parsed_content("validate#inferer"),
            num_classes=int(parser.get_parsed_content("num_classes")),
            mask_key=self.mask_key,
            keep_predictions=self.keep_predictions,
        )

    def _case_images(self, parser: ConfigParser) -> list[dict[str, np.ndarray]]:
        """Image, label and mask of the first validation cases, for the overlay figures."""
        cases = []
        for batch in parser.get_parsed_content("validate#dataloader"):
            for i in range(batch["image"].shape[0]):
                if len(cases) == self.keep_predictions:
                    return cases
                case = {"image": np.asarray(batch["image"][i, 0]), "label": np.asarray(batch["label"][i, 0])}
                if self.mask_key:
                    case["mask"] = np.asarray(batch[self.mask_key][i, 0])
                cases.append(case)
        return cases

    # ------------------------------------------------------------------------------------------- one run

    def run(self, method: str, seed: int) -> dict[str, Any]:
        """Train one student (or reuse a finished run with the same settings) and evaluate it.

        ``method`` is a name from ``configs/methods`` or a variant spec ``<name>+KEY=JSON...``.
        """
        method_files = method_config(method, self.config_root)
        variant = split_variant(method)[1]
        run_dir = run_folder(self.output_dir, method, seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "configs": [str(p) for p in self.base_configs + method_files],
            "method_config": [json.loads(f.read_text()) for f in method_files],
            "overrides": {**self.overrides, **variant},
            "seed": seed,
            "max_epochs": self.max_epochs,
            "teacher": self.teacher_checkpoint,
        }
        key = _fingerprint(settings)
        result_file = run_dir / "result.json"
        if result_file.is_file():
            previous = json.loads(result_file.read_text())
            if previous.get("fingerprint") == key:
                logger.info(f"{method} seed {seed}: finished before, reusing {result_file}")
                return previous
        overrides = {
            **self.overrides,
            **variant,
            "seed": seed,
            "teacher_checkpoint": self.teacher_checkpoint,
            "max_epochs": self.max_epochs,
            "val_interval": NEVER_STEP,
            "progress_bar": False,
            "ckpt_dir": str(run_dir / "models"),
            "resume_dir": str(run_dir / "resume"),
            "output_dir": str(run_dir / "eval"),
        }
        parser = build_parser(settings["configs"], overrides)
        start = time.perf_counter()
        parser.get_parsed_content("initialize")
        parser.get_parsed_content("teacher_stage").ensure()  # loads the shared teacher; nothing without one
        trainer = parser.get_parsed_content("train#trainer")
        if not self.verbose:  # one line per run instead of one per iteration
            for name in ("monai.handlers.StatsHandler", trainer.logger.name):
                logging.getLogger(name).setLevel(logging.WARNING)
        trainer.run()
        train_seconds = time.perf_counter() - start
        network = parser.get_parsed_content("network")
        tmp = run_dir / "model.pt.tmp"
        torch.save(network.state_dict(), tmp)
        os.replace(tmp, run_dir / "model.pt")
        rows, preds = self._evaluate(parser, network)
        for index, pred in enumerate(preds):
            np.save(run_dir / f"prediction_{index}.npy", pred)
        final_losses = {
            k: float(torch.as_tensor(v).detach()) for k, v in trainer.state.output.items() if k.startswith("loss")
        }
        result = {
            "method": method,
            "seed": seed,
            "fingerprint": key,
            "iterations": int(trainer.state.iteration),
            "train_seconds": round(train_seconds, 1),
            "metrics": mean_over_cases(rows),
            "cases": rows,
            "final_losses": final_losses,
            "term_grad_norms": _median_grad_norms(trainer.term_grad_norms),
            "teacher_checkpoint": self.teacher_checkpoint,
            **_model_facts(network, self.input_shape, self.latency_repeats),
        }
        _atomic_json(result_file, result)
        return result


def compare(
    methods: Sequence[str],
    seeds: Sequence[int],
    budget: int,
    output_dir: str | os.PathLike,
    data_config: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    keep_predictions: int = 2,
    latency_repeats: int = 5,
    verbose: bool = False,
    config_root: str | os.PathLike | None = None,
) -> Path:
    """Run the comparison and write its tables and figures; returns the path of ``results.md``."""
    for name in methods:
        method_config(name, config_root)  # fail before any training on a typo or a malformed variant
    comparison = Comparison(
        data_config, output_dir, budget, overrides, keep_predictions, latency_repeats, verbose, config_root
    )
    teacher = comparison.prepare_teacher()
    print(f"teacher: Dice {teacher['metrics']['dice']:.4f} ({comparison.teacher_checkpoint})", flush=True)
    results = []
    for name in methods:
        for seed in seeds:
            result = comparison.run(name, seed)
            results.append(result)
            print(
                f"{name} seed {seed}: Dice {result['metrics']['dice']:.4f}, "
                f"{result['iterations']} iterations in {result['train_seconds']:.0f} s",
                flush=True,
            )
    ComparisonOutputs(comparison).write(teacher, results, methods)
    print((comparison.output_dir / "results.md").read_text(), flush=True)
    return comparison.output_dir / "results.md"


def _median_grad_norms(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Median over the measured iterations of each term's gradient norm (``{}`` when nothing was measured)."""
    names = [k for k in (history[0] if history else {}) if k != "iteration"]
    return {name: float(np.median([h[name] for h in history])) for name in names}


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightvessel_monai.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=None,
        help="data overlay, a path (configs/data/drive.json) or a name (drive) (default: synthetic 2D)",
    )
    parser.add_argument(
        "--config_root",
        default=None,
        help="folder with bundle/configs/ and configs/ (default: the checkout, else the installed package data)",
    )
    parser.add_argument("--methods", default="none,kd,at,cwd,skd,emkd,dskd,lightvessel", help="comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated integers")
    parser.add_argument(
        "--budget", type=int, required=True, help="training iterations per student (rounded up to epochs)"
    )
    parser.add_argument("--output_dir", default="runs/compare", help="everything is written under this folder")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, e.g. --set teacher_train#settings#max_epochs=20 (repeatable)",
    )
    parser.add_argument("--overlays", type=int, default=2, help="validation cases drawn in overlays/")
    parser.add_argument("--latency_repeats", type=int, default=5)
    parser.add_argument("--verbose", action="store_true", help="show the trainers' per-iteration logs")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    overrides = {}
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"lightvessel_monai error: --set expects KEY=VALUE, got '{item}'", file=sys.stderr)
            return 2
        overrides[key] = parse_value(value)
    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        print(f"lightvessel_monai error: --seeds must be comma-separated integers, got '{args.seeds}'", file=sys.stderr)
        return 2
    return exit_code_of(
        lambda: compare(
            split_methods(args.methods),
            seeds,
            args.budget,
            args.output_dir,
            args.data,
            overrides,
            keep_predictions=args.overlays,
            latency_repeats=args.latency_repeats,
            verbose=args.verbose,
            config_root=args.config_root,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
