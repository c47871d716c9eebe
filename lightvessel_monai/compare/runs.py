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
run ``runs/<method>_seed<k>/`` with ``result.json`` and the bundle's own outputs (``models/model_final.pt``, the
final weights that are scored; ``models/model.pt``; ``eval/report.md``). Each run is the bundle's own plan, as
``python -m monai.bundle run`` runs it (MONAI's ``ConfigWorkflow``: ``initialize``, ``run``, ``finalize``), with the
comparison's overrides; so a run here and the same command line give the same weights. A run whose ``result.json``
matches the requested settings is not repeated, so an interrupted comparison resumes where it stopped. (Runs
stored before this layout kept the weights in ``runs/<method>_seed<k>/model.pt``; they are still read there.)

A method may carry its own config overrides, ``<name>+KEY=JSON+KEY=JSON``, to compare variants of one method side by
side with the same ``none`` runs, e.g. ``--methods "none,lightvessel,lightvessel+asd_weight=0.001"``; such a run is
stored under ``runs/<name>+KEY=JSON..._seed<k>/`` and named by its whole spec in every table. With
``--set term_grad_interval=N`` every run also records, every N iterations, the gradient norm of each weighted term on
the student's parameters; ``results.md`` then gets a table of their medians against the segmentation loss's.

Cross-domain evaluation: ``--target-data A[,B...]`` (data overlays, repeatable) evaluates the final weights of every
run, and the teacher, on every labelled image of each target (its datalist's ``training`` and ``validation``
sections). A target is never trained or selected on: runs train exactly as without it (same cache key, so finished
runs are reused and only evaluated), and the network always comes from the source configs (a target's
``network_def`` is ignored). The target's data pipeline is ``train.json`` + the source overlay + ``--set`` + the
target overlay, whose own keys win (datalist, preprocessing, inferer, labels, reader, ``eval_mask_key``). Each
evaluation is cached in ``<run>/targets/<name>.json`` (``teacher/targets/`` for the teacher), keyed by the configs,
the target overlay and the weights file. The tables get, per target (named by the overlay's file stem), its Dice
(mean ± std over seeds) and the paired difference from ``none`` on its images with the bootstrap interval, beside the
source's (``results.csv``: ``<name>_dice_mean`` ... ``<name>_significant``; ``runs.csv``: ``<name>_dice``);
``dice.png`` gets one panel per target beside the source's.
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.utils import merge_kv

from lightvessel_monai.compare.outputs import ComparisonOutputs, run_folder
from lightvessel_monai.data.checks import load_datalist
from lightvessel_monai.errors import ConfigKeyError, LightVesselError, exit_code_of
from lightvessel_monai.files import atomic_write_text
from lightvessel_monai.networks import count_parameters
from lightvessel_monai.pipeline.config_files import data_overlay, find_bundle_root, methods_dir, train_config
from lightvessel_monai.reporting.evaluation import count_flops, cpu_latency_ms, evaluate_cases, mean_over_cases

__all__ = ["main", "compare", "method_config", "split_methods", "split_variant", "TargetData"]

logger = logging.getLogger("lightvessel_monai.compare")

NEVER_STEP = 10**9  # a validation interval that never fires: runs are evaluated once, after the budget
TARGET_SECTIONS = ("training", "validation")  # a target is only evaluated, so every labelled image of it counts


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


class _WarningsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def bundle_workflow(
    configs: Sequence[str | os.PathLike], overrides: Mapping[str, Any], quiet: bool = True
) -> ConfigWorkflow:
    """The MONAI ``ConfigWorkflow`` that ``python -m monai.bundle run`` builds for ``configs`` and ``overrides``
    (``initialize``, ``run``, ``finalize``), leaving this process's logging set-up as it is."""
    workflow_logger = logging.getLogger("monai.bundle.workflows")
    level = workflow_logger.level
    if quiet:  # its notes on the overlays' folders and the skipped logging file, once per run
        workflow_logger.setLevel(logging.ERROR)
    try:
        return ConfigWorkflow(config_file=[str(c) for c in configs], logging_file=False, **dict(overrides))
    finally:
        workflow_logger.setLevel(level)


def build_parser(configs: Sequence[str | os.PathLike], overrides: Mapping[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _fingerprint(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_keys(settings: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The key of a stored run, and the keys an unchanged run had before (a run stored under one is adopted).

    ``settings["method_config"]`` is the method overlays' content; their ``_comment*`` keys do not enter the key,
    so editing a comment retrains nothing. The former keys: the one that hashed the comments too (before issue 29),
    and the one of the overlay with the module paths it named before the package layout (:data:`_FORMER_PATHS`).
    """
    configs = [without_comments(c) for c in settings.get("method_config", [])]
    key = _fingerprint({**settings, "method_config": configs})
    before_layout = _fingerprint({**settings, "method_config": [with_former_paths(c) for c in configs]})
    return key, tuple(k for k in (_fingerprint(settings), before_layout) if k != key)


# What the package layout of issue 29 moved, as a method overlay named it before: {new path: former path}.
_FORMER_PATHS = {
    "lightvessel_monai.taps": "lightvessel_monai.features",
    "lightvessel_monai.gkd.msan": "lightvessel_monai.networks.msan",
    "lightvessel_monai.gkd.alignment": "lightvessel_monai.act",
    **{f"lightvessel_monai.gkd.{name}": f"lightvessel_monai.{package}.{name}" for package, names in (
        ("networks", ("SemanticHeader", "LabelSemanticAutoEncoder")),
        ("handlers", ("SemanticDistanceHandler",)),
        ("metrics", ("FrechetSemanticDistance", "frechet_distance")),
        ("losses", ("AlignmentConsistencyLoss", "DomainInvariantCrossDistillation", "DualContrastiveGraphDistillation",
                    "GKDSemantics", "SemanticAlignment", "contrastive_graph_loss", "graph_edges")),
    ) for name in names},
}  # fmt: skip
_DOTTED = re.compile(r"\blightvessel_monai(?:\.\w+)+")


def with_former_paths(config: Any) -> Any:
    """``config`` with every string naming a moved module or class as it did before the layout."""
    if isinstance(config, dict):
        return {k: with_former_paths(v) for k, v in config.items()}
    if isinstance(config, list):
        return [with_former_paths(v) for v in config]
    if isinstance(config, str):
        return _DOTTED.sub(_former_path, config)
    return config


def _former_path(match: re.Match) -> str:
    """The former name of a dotted path: its longest prefix (whole parts) that moved, replaced."""
    parts = match.group(0).split(".")
    for end in range(len(parts), 1, -1):
        former = _FORMER_PATHS.get(".".join(parts[:end]))
        if former:
            return ".".join([former, *parts[end:]])
    return match.group(0)


def without_comments(config: Any) -> Any:
    """``config`` without its ``_comment*`` keys, at any depth: editing a comment changes no run key."""
    if isinstance(config, dict):
        return {k: without_comments(v) for k, v in config.items() if not str(k).startswith("_comment")}
    if isinstance(config, list):
        return [without_comments(v) for v in config]
    return config


def _atomic_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def _model_facts(network: torch.nn.Module, input_shape: Sequence[int], latency_repeats: int) -> dict[str, float]:
    return {
        "params": count_parameters(network),
        "gflops": round(count_flops(network, input_shape) / 1e9, 3),
        "cpu_latency_ms": round(cpu_latency_ms(network, input_shape, repeats=latency_repeats), 1),
    }


def _evaluation_inputs(parser: ConfigParser, mask_key: str | None) -> dict[str, Any]:
    """The data and settings :func:`evaluate_cases` needs, from a parser's ``validate`` section."""
    return {
        "prediction_mask_key": parser.get("prediction_mask_key", None),
        "dataloader": parser.get_parsed_content("validate#dataloader"),
        "device": parser.get_parsed_content("device"),
        "inferer": parser.get_parsed_content("validate#inferer"),
        "num_classes": int(parser.get_parsed_content("num_classes")),
        "mask_key": mask_key,
    }


class TargetData:
    """One ``--target-data`` overlay: data the students are only evaluated on, never trained or selected on.

    Its parser is the source's (``train.json`` + source overlay + ``--set``) with the target overlay merged on top,
    so that the target's own data keys win over ``--set`` (which is meant for the source runs).

    Args:
        spec: a path or a name from ``configs/data/``.
        base_configs: the source's config files, ``train.json`` first.
        overrides: the comparison's ``--set`` overrides.
        folder: where the target's merged datalist is written (``<output_dir>/targets``).
        config_root: as for :func:`~lightvessel_monai.pipeline.config_files.data_overlay`.
    """

    def __init__(
        self,
        spec: str | os.PathLike,
        base_configs: Sequence[Path],
        overrides: Mapping[str, Any],
        folder: Path,
        config_root: str | os.PathLike | None = None,
    ) -> None:
        try:
            self.overlay = data_overlay(spec, config_root)
        except ConfigKeyError as err:
            raise ConfigKeyError(f"--target-data: {err}") from None
        try:
            content = json.loads(self.overlay.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ConfigKeyError(f"--target-data: {self.overlay} is not a readable JSON overlay ({err})") from None
        if not isinstance(content, dict):
            raise ConfigKeyError(
                f"--target-data: {self.overlay} must be a JSON mapping of config keys, not {type(content).__name__}"
            )
        self.name = self.overlay.stem
        self.parser = build_parser(base_configs, overrides)
        for key, value in content.items():
            merge_kv(self.parser, key, value)
        self.folder = folder / self.name
        # what a cached evaluation depends on besides the weights: every config text and override
        self.settings_key = _fingerprint(
            {"configs": [Path(c).read_text() for c in base_configs], "overrides": overrides, "target": content}
        )
        self.mask_key = self.parser.get("eval_mask_key", None)
        self.images: list[str] = []
        self._inputs: dict[str, Any] | None = None

    def check_fits(self, source: ConfigParser) -> None:
        """A one-line error when the source's networks cannot take the target's images or labels."""
        for key in ("spatial_dims", "in_channels", "num_classes"):
            ours, theirs = self.parser.get_parsed_content(key), source.get_parsed_content(key)
            if ours != theirs:
                raise ConfigKeyError(
                    f"--target-data: {self.overlay} has {key} {ours}, but the source's networks have {theirs}"
                )

    def prepare(self) -> None:
        """Write the target's datalist and check every entry: all labelled sections, as one ``validation`` list.

        The configs' own ``validate#datalist`` (file checks, label values, reader) then reads it, so the target's
        ``validate#dataloader`` and ``validate#preprocessing`` cover every image of the target. A data error names
        the target overlay.
        """
        try:
            self._prepare()
        except LightVesselError as err:
            raise type(err)(f"--target-data {self.overlay}: {err}") from None

    def _prepare(self) -> None:
        # absolute, so that the entries (joined to this folder) stay valid in the merged datalist written elsewhere
        original = Path(self.parser.get_parsed_content("datalist_file")).resolve()
        try:
            sections = [key for key in TARGET_SECTIONS if key in json.loads(original.read_text())]
        except (OSError, UnicodeDecodeError, ValueError, TypeError):
            sections = []  # load_datalist below names what is wrong with the file
        entries = [entry for key in sections or ["validation"] for entry in load_datalist(str(original), key)]
        merged = self.folder / "datalist.json"
        merged.parent.mkdir(parents=True, exist_ok=True)
        _atomic_json(merged, {"source": str(original), "validation": entries})
        self.parser["datalist_file"] = str(merged)
        self.images = [str(entry["image"]) for entry in self.parser.get_parsed_content("validate#datalist")]

    def evaluate(self, load_network: Callable[[], torch.nn.Module], model_file: Path, folder: Path) -> dict[str, Any]:
        """Metrics of the weights in ``model_file`` on every target image, cached in ``folder/targets/<name>.json``.

        ``load_network`` gives the source's network with those weights; it is only called on a cache miss.
        """
        key = _fingerprint(
            {"settings": self.settings_key, "model": hashlib.sha256(model_file.read_bytes()).hexdigest()}
        )
        path = folder / "targets" / f"{self.name}.json"
        if path.is_file():
            previous = json.loads(path.read_text())
            if previous.get("key") == key:
                return previous
        if self._inputs is None:
            self._inputs = _evaluation_inputs(self.parser, self.mask_key)
        rows, _ = evaluate_cases(load_network(), **self._inputs)
        result = {
            "target": self.name,
            "overlay": str(self.overlay),
            "key": key,
            "model": str(model_file),
            "images": self.images,
            "metrics": mean_over_cases(rows),
            "cases": rows,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_json(path, result)
        return result


def final_weights(run_dir: Path) -> Path:
    """The scored weights of a run: the bundle's ``models/model_final.pt``, or a run stored before compare ran the
    bundle's plan, ``model.pt`` beside its ``result.json``."""
    bundle_file = run_dir / "models" / "model_final.pt"
    legacy = run_dir / "model.pt"
    return legacy if legacy.is_file() and not bundle_file.is_file() else bundle_file


def _load_weights(network: torch.nn.Module, model_file: Path) -> torch.nn.Module:
    network.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True))
    return network


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
        target_data: Sequence[str | os.PathLike] = (),
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
        self.source_name = Path(data_config).stem if data_config else "default data"
        self.targets = [
            TargetData(spec, self.base_configs, self.overrides, self.output_dir / "targets", config_root)
            for spec in target_data
        ]
        names = [target.name for target in self.targets]
        if len(set(names)) < len(names):
            raise ConfigKeyError(f"--target-data: two overlays share a file name ({', '.join(names)})")
        if self.targets:
            source = build_parser(self.base_configs, self.overrides)
            for target in self.targets:
                target.check_fits(source)
        self.output_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------ the teacher

    def prepare_teacher(self) -> dict[str, Any]:
        """Train (or reuse) the shared teacher and evaluate it like the students (on the targets too)."""
        for target in self.targets:  # the targets' data is checked before anything trains
            target.prepare()
        parser = build_parser(self.base_configs, {**self.overrides, "progress_bar": False})
        parser.get_parsed_content("initialize")
        checkpoint = parser.get_parsed_content("teacher_stage").ensure()
        self.teacher_checkpoint = str(Path(checkpoint).resolve())
        datalist = parser.get_parsed_content("train#datalist")
        trained = {Path(entry["image"]).resolve() for entry in datalist}
        for target in self.targets:
            if shared := trained.intersection(Path(image).resolve() for image in target.images):
                logger.warning(f"--target-data {target.name}: {len(shared)} of its images are source training images")
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
        if self.targets:
            result["targets"] = self._evaluate_targets(
                lambda: teacher, Path(self.teacher_checkpoint), self.output_dir / "teacher"
            )
        self.teacher_predictions = preds
        _atomic_json(self.output_dir / "teacher.json", result)
        return result

    def _evaluate(self, parser: ConfigParser, network: torch.nn.Module) -> tuple[list[dict], list[np.ndarray]]:
        return evaluate_cases(
            network, **_evaluation_inputs(parser, self.mask_key), keep_predictions=self.keep_predictions
        )

    def _evaluate_targets(
        self, load_network: Callable[[], torch.nn.Module], model_file: Path, folder: Path
    ) -> dict[str, dict[str, Any]]:
        """``{target name: its result}`` of one set of weights, each cached in ``folder/targets/``."""
        return {target.name: target.evaluate(load_network, model_file, folder) for target in self.targets}

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
        key, former_keys = run_keys(settings)  # the targets are not part of it: they never change how a run trains
        overrides = {
            **self.overrides,
            **variant,
            "seed": seed,
            "teacher_checkpoint": self.teacher_checkpoint,
            "max_epochs": self.max_epochs,
            "val_interval": NEVER_STEP,
            "progress_bar": False,
            "latency_repeats": self.latency_repeats,  # the bundle's report times the networks too
            "ckpt_dir": str(run_dir / "models"),
            # the shared teacher's folder: what a stage caches beside the teacher (GKD's ACT headers) is shared too
            "teacher_dir": str(Path(self.teacher_checkpoint).parent),
            "resume_dir": str(run_dir / "resume"),
            "output_dir": str(run_dir / "eval"),
        }
        result_file = run_dir / "result.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        if result.get("fingerprint") in former_keys:
            logger.warning(f"{method} seed {seed}: adopting {result_file}, stored under an earlier key of the same run")
            result["fingerprint"] = key
            _atomic_json(result_file, result)
        if result.get("fingerprint") == key and (not self.targets or final_weights(run_dir).is_file()):
            logger.info(f"{method} seed {seed}: finished before, reusing {result_file}")
        else:
            result = self._train(settings["configs"], overrides, method, seed, key, run_dir)
        if self.targets:  # the weights the source metrics were measured on, on every target image
            model_file = final_weights(run_dir)
            parser = build_parser(settings["configs"], overrides)
            result["targets"] = self._evaluate_targets(
                lambda: _load_weights(parser.get_parsed_content("network"), model_file), model_file, run_dir
            )
        return result

    def _train(
        self, configs: Sequence[str], overrides: Mapping[str, Any], method: str, seed: int, key: str, run_dir: Path
    ) -> dict[str, Any]:
        """One run through the bundle's own plan, then its final weights scored; writes ``result.json``."""
        start = time.perf_counter()
        workflow = bundle_workflow(configs, overrides, quiet=not self.verbose)
        workflow.initialize()
        parser = workflow.parser
        trainer = parser.get_parsed_content("train#trainer")  # the instance the plan's "run" uses (resolved once)
        # one line per run instead of one per iteration; a filter, not a level: MONAI's StatsHandler resets its
        # logger to INFO whenever one is built, and the plan builds some while it runs
        quiet = _WarningsOnly() if not self.verbose else None
        loggers = [logging.getLogger(name) for name in ("monai.handlers.StatsHandler", trainer.logger.name)]
        for log in loggers if quiet else []:
            log.addFilter(quiet)
        try:
            workflow.run()
            workflow.finalize()
        finally:
            for log in loggers if quiet else []:
                log.removeFilter(quiet)
        train_seconds = time.perf_counter() - start
        # the report has loaded the best validated model.pt into the network: score the final weights
        network = _load_weights(parser.get_parsed_content("network"), final_weights(run_dir))
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
        _atomic_json(run_dir / "result.json", result)
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
    target_data: Sequence[str | os.PathLike] = (),
) -> Path:
    """Run the comparison and write its tables and figures; returns the path of ``results.md``.

    ``target_data``: data overlays the teacher and every run's final weights are also evaluated on (all their
    labelled images), never trained on; see the module docstring.
    """
    for name in methods:
        method_config(name, config_root)  # fail before any training on a typo or a malformed variant
    comparison = Comparison(
        data_config,
        output_dir,
        budget,
        overrides,
        keep_predictions,
        latency_repeats,
        verbose,
        config_root,
        target_data=target_data,
    )
    teacher = comparison.prepare_teacher()
    print(
        f"teacher: Dice {teacher['metrics']['dice']:.4f}{_target_dice(teacher)} ({comparison.teacher_checkpoint})",
        flush=True,
    )
    results = []
    for name in methods:
        for seed in seeds:
            result = comparison.run(name, seed)
            results.append(result)
            print(
                f"{name} seed {seed}: Dice {result['metrics']['dice']:.4f}{_target_dice(result)}, "
                f"{result['iterations']} iterations in {result['train_seconds']:.0f} s",
                flush=True,
            )
    ComparisonOutputs(comparison).write(teacher, results, methods)
    print((comparison.output_dir / "results.md").read_text(), flush=True)
    return comparison.output_dir / "results.md"


def _target_dice(result: Mapping[str, Any]) -> str:
    """``", on xca 0.7123"`` per target of a result, for the progress lines ("" without targets)."""
    return "".join(f", on {name} {t['metrics']['dice']:.4f}" for name, t in result.get("targets", {}).items())


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
        "--target-data",
        dest="target_data",
        action="append",
        default=[],
        metavar="OVERLAY[,OVERLAY...]",
        help="data overlays (paths or names, comma-separated, repeatable) that the teacher and every run's final "
        "weights are also evaluated on, all their labelled images (training and validation sections); never "
        "trained or selected on, so finished runs are reused. The target's data keys win over --set; the network "
        "is always the source's",
    )
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
            target_data=[spec for item in args.target_data for spec in _split(item)],
        )
    )
