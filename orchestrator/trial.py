"""The trial function: one unlearning run, evaluated against its references.

``scissorhands unlearn`` calls it in-process; every sweep trial calls the same function.
"""
from __future__ import annotations

import copy

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from orchestrator.config import RunConfig
from orchestrator.data import ForgetSpec, UnlearnData, load_dataset, split_forget
from orchestrator.errors import DivergenceError
from orchestrator.evaluation import CORE_METRICS, avg_gap, evaluate
from orchestrator.methods import METHODS
from orchestrator.models import model_info
from orchestrator.references import References, get_references


@dataclass
class TrialResult:
    report: dict  # the JSON contract: original / retrain / unlearned / avg_gap / avg_gap_original / config
    model: nn.Module
    history: list[dict]
    extras: dict  # every metric including MIA variants, and method statistics


def prepare(cfg: RunConfig) -> UnlearnData:
    """Validate everything cheap first, so bad input fails before any training."""
    model_info(cfg.model)
    cfg.method.validate()
    forget = ForgetSpec.parse(cfg.forget)
    return split_forget(load_dataset(cfg.dataset, cfg.data_dir, cfg.split_seed), forget, cfg.seed)


def core(metrics: dict) -> dict:
    return {k: round(float(metrics[k]), 4) for k in CORE_METRICS}


def run_unlearning(
    cfg: RunConfig,
    cache_dir: Path,
    *,
    data: UnlearnData | None = None,
    references: References | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrialResult:
    data = data or prepare(cfg)
    refs = references or get_references(cfg, data, cache_dir, progress)
    original_metrics = refs.original.metrics(data)
    retrain_metrics = refs.retrain.metrics(data)

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = copy.deepcopy(refs.original.model)
    result = METHODS["scissorhands"](
        model, data, cfg.method, generator,
        late_layers=model_info(cfg.model).late_layers, backend=cfg.kernels, on_epoch=on_epoch,
    )
    metrics = evaluate(result.model, data)
    _check_not_collapsed(data, metrics)
    unlearned = core(metrics) | {"RTE_s": round(result.seconds, 3)}
    report = {
        "original": core(original_metrics),
        "retrain": core(retrain_metrics),
        "unlearned": unlearned,
        "avg_gap": round(avg_gap(metrics, retrain_metrics), 4),
        "avg_gap_original": round(avg_gap(original_metrics, retrain_metrics), 4),
        "config": {"method": "scissorhands", **cfg.to_dict()},
    }
    extras = {
        "unlearned": metrics, "original": original_metrics, "retrain": retrain_metrics, **result.stats,
    }
    return TrialResult(report, result.model, result.history, extras)


def _check_not_collapsed(data: UnlearnData, metrics: dict) -> None:
    """A model at chance accuracy on D_r has been destroyed, not unlearned: say so loudly."""
    classes = len(torch.unique(data.y_retain))
    chance = 100.0 / classes
    if metrics["RA"] <= 1.5 * chance:
        raise DivergenceError(
            f"unlearned model collapsed: RA {metrics['RA']:.1f}% is at chance level ({chance:.1f}% for {classes} "
            f"classes); lower --lr, --forget-weight or --trim-ratio"
        )
