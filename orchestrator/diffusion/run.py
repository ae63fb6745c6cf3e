"""``run_diffusion_unlearning``: one diffusion unlearning run, evaluated against its references.

``scissorhands unlearn --task diffusion`` and every diffusion sweep trial call this same
function. It is seeded and deterministic (same config, same thread count -> same metrics),
touches no global state (the caller's torch RNG is left as it was), and reports per-epoch
repair statistics through ``on_epoch``.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Callable

import torch

import orchestrator.methods.scissorhands_diffusion  # noqa: F401  (registers METHODS["scissorhands_diffusion"])
from orchestrator.data import ForgetSpec, load_dataset, split_forget
from orchestrator.diffusion.config import DiffusionRunConfig
from orchestrator.diffusion.evaluation import EVAL_CODE_VERSION, eval_noise, generate, sample_metrics, save_grid
from orchestrator.diffusion.references import (
    Cached, get_classifier, get_generator, resize_uint8, to_signed,
)
from orchestrator.diffusion.sampling import alphas_cumprod
from orchestrator.diffusion.tasks import ClassTask
from orchestrator.errors import DivergenceError, UserError
from orchestrator.methods import METHODS
from orchestrator.storage import atomic_write_json, content_key
from orchestrator.trial import TrialResult

CORE = ("forget_acc", "retained_acc", "fid")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; allowed here: auto, cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_artifact_dir(cfg: DiffusionRunConfig, cache_dir: Path) -> Path:
    return Path(cache_dir) / "diffusion-runs" / content_key(cfg.to_dict())


def _eval_spec(cfg: DiffusionRunConfig, classifier: Cached, forget_class: int) -> dict:
    return {"classifier": classifier.path.name, "forget_class": forget_class, "per_class": cfg.samples_per_class,
            "guidance": cfg.guidance_scale, "ddim_steps": cfg.ddim_steps, "eval_seed": cfg.eval_seed,
            "columns": cfg.grid_columns, "code": EVAL_CODE_VERSION}


def run_diffusion_unlearning(
    cfg: DiffusionRunConfig,
    cache_dir: Path,
    *,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    artifact_dir: Path | None = None,
) -> TrialResult:
    """Class erasure (default) or, with ``cfg.pretrained``, Stable Diffusion concept erasure.

    Writes sample grids (PNG) into ``artifact_dir`` (default ``<cache>/diffusion-runs/<config key>``)
    and lists them in ``extras["artifacts"]``.
    """
    cfg.validate()
    cache_dir = Path(cache_dir)
    artifact_dir = Path(artifact_dir) if artifact_dir else default_artifact_dir(cfg, cache_dir)
    with torch.random.fork_rng(devices=[]):
        if cfg.mode == "prompt":
            from orchestrator.diffusion.sd import run_prompt_unlearning

            return run_prompt_unlearning(cfg, artifact_dir, progress=progress, on_epoch=on_epoch)
        return _run_class(cfg, cache_dir, artifact_dir, progress, on_epoch)


def _evaluate(unet, cfg, clf, abar, num_classes, forget_class, real_retained, noise, labels, grid_path):
    samples = generate(unet, noise, labels, num_classes, abar, cfg.ddim_steps, cfg.guidance_scale)
    metrics = sample_metrics(clf.model, samples, labels, forget_class, real_retained)
    save_grid(samples, labels, grid_path, cfg.grid_columns)
    return metrics


def _reference_metrics(ref: Cached, cfg, clf, abar, num_classes, forget_class, real_retained, noise, labels, out: Path):
    """Metrics and grid of a cached generator, computed once per evaluation setting and cached beside it."""
    key = content_key(_eval_spec(cfg, clf, forget_class))
    file, grid = ref.path / f"eval-{key}.json", ref.path / f"eval-{key}.png"
    metrics = None
    if file.is_file() and grid.is_file():
        try:
            metrics = json.loads(file.read_text())
        except json.JSONDecodeError:
            metrics = None  # a corrupt metrics file is recomputed
    if metrics is None:
        metrics = _evaluate(ref.model, cfg, clf, abar, num_classes, forget_class, real_retained, noise, labels, grid)
        atomic_write_json(file, metrics)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(grid, out / f"grid-{ref.kind.removeprefix('diffusion-')}.png")
    return metrics


def _run_class(cfg, cache_dir, artifact_dir, progress, on_epoch) -> TrialResult:
    device = resolve_device(cfg.device)
    forget_class = cfg.forget_class()
    dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.split_seed)
    data = split_forget(dataset, ForgetSpec.parse(cfg.forget), cfg.seed)
    present = sorted(int(c) for c in torch.unique(data.y_retain))
    if cfg.anchor_class is not None and cfg.anchor_class not in present:
        raise UserError(f"--anchor-class {cfg.anchor_class}: not a retained class; allowed: {present}")
    num_classes = dataset.num_classes
    g = cfg.generator

    clf = get_classifier(dataset, cfg.image_size, cfg.classifier, cfg.seed, cache_dir, progress)
    original = get_generator("original", data, cfg.image_size, g, cfg.seed, cache_dir, device, progress)
    retrain = get_generator("retrain", data, cfg.image_size, g, cfg.seed, cache_dir, device, progress)

    abar = alphas_cumprod(g.noise_schedule, g.train_timesteps)
    noise, labels = eval_noise(num_classes, cfg.samples_per_class, (dataset.channels, cfg.image_size, cfg.image_size),
                               cfg.eval_seed)
    real_retained = resize_uint8(data.x_retain, cfg.image_size)
    ctx = (cfg, clf, abar, num_classes, forget_class, real_retained, noise, labels)
    m_original = _reference_metrics(original, *ctx, artifact_dir)
    m_retrain = _reference_metrics(retrain, *ctx, artifact_dir)

    generator = torch.Generator().manual_seed(cfg.seed)
    reinit_generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    unet = copy.deepcopy(original.model)
    task = ClassTask(
        x_forget=to_signed(resize_uint8(data.x_forget, cfg.image_size)).to(device),
        forget_class=forget_class,
        x_retain=to_signed(real_retained).to(device),
        y_retain=data.y_retain.to(device),
        num_classes=num_classes,
        abar=abar,
        p_uncond=g.p_uncond,
        anchor_class=cfg.anchor_class,
    )
    result = METHODS["scissorhands_diffusion"](
        unet, task, cfg, generator, reinit_generator=reinit_generator, on_epoch=on_epoch
    )
    m_unlearned = _evaluate(result.model, *ctx, artifact_dir / "grid-unlearned.png")
    chance = 100.0 / num_classes
    # Collapse = a generator that was clearly class-conditional now generates at chance.
    if m_original["retained_acc"] >= 3 * chance and m_unlearned["retained_acc"] <= 1.5 * chance:
        raise DivergenceError(
            f"unlearned generator collapsed: retained_acc {m_unlearned['retained_acc']:.1f}% is at chance level "
            f"({chance:.1f}%; original {m_original['retained_acc']:.1f}%); lower --lr (now {cfg.lr}), --forget-weight (now {cfg.forget_weight}) "
            f"or --trim-ratio (now {cfg.trim_ratio})"
        )

    def core(m: dict) -> dict:
        return {k: round(float(m[k]), 4) for k in CORE}

    report = {
        "original": core(m_original),
        "retrain": core(m_retrain),
        "unlearned": core(m_unlearned) | {"RTE_s": round(result.seconds, 3)},
        "config": {"method": "scissorhands_diffusion", "task": "diffusion", **cfg.to_dict()},
    }
    artifacts = [str(artifact_dir / f"grid-{r}.png") for r in ("original", "retrain", "unlearned")]
    stats = {k: v for k, v in result.stats.items() if k != "trimmed_params"}
    extras = {
        "original": m_original, "retrain": m_retrain, "unlearned": m_unlearned,
        "classifier": {"path": str(clf.path), **clf.meta.get("info", {})},
        "references": {"original": str(original.path), "retrain": str(retrain.path)},
        "artifacts": artifacts,
        "trimmed_params": result.stats.get("trimmed_params", []),
        **stats,
    }
    return TrialResult(report, result.model, result.history, extras)


def build_references(cfg: DiffusionRunConfig, cache_dir: Path, progress: bool = True) -> None:
    """Train (or find cached) the classifier and the original / retrain generators, so that
    sweep trials only load them."""
    cfg.validate()
    dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.split_seed)
    data = split_forget(dataset, ForgetSpec.parse(cfg.forget), cfg.seed)
    device = resolve_device(cfg.device)
    get_classifier(dataset, cfg.image_size, cfg.classifier, cfg.seed, cache_dir, progress)
    for role in ("original", "retrain"):
        get_generator(role, data, cfg.image_size, cfg.generator, cfg.seed, cache_dir, device, progress)
