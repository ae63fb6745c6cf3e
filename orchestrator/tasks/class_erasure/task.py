"""Class erasure: a class-conditional diffusion generator forgets one class.

``scissorhands unlearn --task diffusion`` and every diffusion sweep trial call the same
:meth:`Diffusion.run`. It is seeded and deterministic (same config, same thread count ->
same metrics) and leaves the caller's torch RNG as it was.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Callable

import torch

from orchestrator.datasets import load_dataset
from orchestrator.datasets.images import resize_uint8
from orchestrator.forget import ForgetSpec, split_forget
from orchestrator.tasks.class_erasure.config import DiffusionRunConfig
from orchestrator.diffusion.images import save_grid, to_signed
from orchestrator.tasks.class_erasure.evaluation import EVAL_CODE_VERSION, eval_noise, generate, sample_metrics
from orchestrator.tasks.class_erasure.references import get_classifier, get_generator
from orchestrator.diffusion.sampling import alphas_cumprod
from orchestrator.tasks.class_erasure.data import ClassTask
from orchestrator.errors import FieldError
from orchestrator.methods import get_method
from orchestrator.tasks import Task, TrialResult
from orchestrator.training import resolve_device

CORE = ("forget_acc", "retained_acc", "fid")


class Diffusion(Task):
    name = "diffusion"
    config_class = DiffusionRunConfig
    default_method = "scissorhands_diffusion"
    core_metrics = CORE
    # gap_* are |metric - retrain generator's|
    metrics = ("forget_acc", "retained_acc", "fid", "RTE_s", "gap_forget_acc", "gap_retained_acc", "gap_fid")
    gap_metrics = ("gap_forget_acc", "gap_retained_acc", "gap_fid")
    utility_metric = "retained_acc"
    headline_metric = None  # no untouched-original figure to pair with: pick cannot validate
    time_metric = "RTE_s"
    table_metrics = ()
    spec_recipes = {"recipe": "generator", "classifier": "classifier"}

    def preset_context(self, cfg: DiffusionRunConfig) -> dict[str, str]:
        return {"forget_kind": ForgetSpec.parse(cfg.forget).kind}

    def run(self, cfg: DiffusionRunConfig, cache_dir: Path, *, progress: bool = True,
            on_epoch: Callable[[dict], None] | None = None, artifact_dir: Path | None = None,
            build: bool = True) -> TrialResult:
        """Writes sample grids (PNG) into ``artifact_dir`` (default ``<cache>/diffusion-runs/<config
        key>``) and lists them in ``extras["artifacts"]``."""
        cfg.validate()
        cache_dir = Path(cache_dir)
        artifact_dir = Path(artifact_dir) if artifact_dir else self.artifact_dir(cfg, cache_dir)
        with torch.random.fork_rng(devices=[]):
            return self._run_class(cfg, cache_dir, artifact_dir, progress, on_epoch, build)

    def _run_class(self, cfg, cache_dir, artifact_dir, progress, on_epoch, build) -> TrialResult:
        device = resolve_device(cfg.device)
        forget_class = cfg.forget_class()
        dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.split_seed)
        data = split_forget(dataset, ForgetSpec.parse(cfg.forget), cfg.seed)
        present = sorted(int(c) for c in torch.unique(data.y_retain))
        anchor_class = getattr(cfg.knobs, "anchor_class", None)
        if anchor_class is not None and anchor_class not in present:
            raise FieldError("anchor_class", anchor_class, f"not a retained class; allowed: {present}")
        num_classes = dataset.num_classes
        g = cfg.generator

        clf = get_classifier(dataset, cfg.image_size, cfg.classifier, cfg.seed, cache_dir, progress, build)
        refs = {role: get_generator(role, data, cfg.image_size, g, cfg.seed, cache_dir, device, progress, build)
                for role in ("original", "retrain")}

        abar = alphas_cumprod(g.noise_schedule, g.train_timesteps)
        noise, labels = eval_noise(num_classes, cfg.samples_per_class,
                                   (dataset.channels, cfg.image_size, cfg.image_size), cfg.eval_seed)
        real_retained = resize_uint8(data.x_retain, cfg.image_size)

        def evaluate(unet, grid: Path) -> dict:
            samples = generate(unet, noise, labels, num_classes, abar, cfg.ddim_steps, cfg.guidance_scale)
            save_grid(samples, labels, grid, cfg.grid_columns)
            return sample_metrics(clf.model, samples, labels, forget_class, real_retained)

        eval_key = {"classifier": clf.path.name, "forget_class": forget_class, "per_class": cfg.samples_per_class,
                    "guidance": cfg.guidance_scale, "ddim_steps": cfg.ddim_steps, "eval_seed": cfg.eval_seed,
                    "columns": cfg.grid_columns, "code": EVAL_CODE_VERSION}
        metrics = {}
        artifact_dir.mkdir(parents=True, exist_ok=True)
        for role, ref in refs.items():  # a reference's metrics and grid are computed once, cached beside it
            grid = ref.metrics_path(eval_key, ".png")
            metrics[role] = ref.metrics(eval_key, lambda ref=ref, grid=grid: evaluate(ref.model, grid), (".png",))
            shutil.copyfile(grid, artifact_dir / f"grid-{role}.png")

        generator = torch.Generator().manual_seed(cfg.seed)
        task = ClassTask(
            x_forget=to_signed(resize_uint8(data.x_forget, cfg.image_size)).to(device),
            forget_class=forget_class,
            x_retain=to_signed(real_retained).to(device),
            y_retain=data.y_retain.to(device),
            num_classes=num_classes,
            abar=abar,
            p_uncond=g.p_uncond,
            anchor_class=anchor_class,
        )
        result = get_method(cfg.method).run(copy.deepcopy(refs["original"].model), task, cfg.knobs, generator,
                                            on_epoch=on_epoch)
        metrics["unlearned"] = evaluate(result.model, artifact_dir / "grid-unlearned.png")
        self.check_collapse(metrics["original"], metrics["unlearned"], num_classes,
                            "lower --lr, --forget-weight or --trim-ratio")
        report = self.report(metrics, result.seconds, cfg)
        artifacts = [str(artifact_dir / f"grid-{r}.png") for r in ("original", "retrain", "unlearned")]
        stats = {k: v for k, v in result.stats.items() if k != "trimmed_params"}
        extras = {
            **metrics,
            "classifier": {"path": str(clf.path), **clf.meta.get("info", {})},
            "references": {role: str(ref.path) for role, ref in refs.items()},
            "artifacts": artifacts,
            "trimmed_params": result.stats.get("trimmed_params", []),
            "forget_digest": cfg.forget,
            **stats,
        }
        return TrialResult(report, result.model, result.history, extras)

    def reference_roles(self, cfg: DiffusionRunConfig) -> tuple[str, ...]:
        """The evaluation classifier and the original / retrain generators: trials only load them.
        Their metrics come with every trial's report."""
        return ("classifier", "original", "retrain")

    def build_reference(self, cfg: DiffusionRunConfig, role: str, cache_dir: Path, progress: bool = True):
        cfg.validate()
        dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.split_seed)
        if role == "classifier":
            return get_classifier(dataset, cfg.image_size, cfg.classifier, cfg.seed, cache_dir, progress), None
        data = split_forget(dataset, ForgetSpec.parse(cfg.forget), cfg.seed)
        generator = get_generator(role, data, cfg.image_size, cfg.generator, cfg.seed, cache_dir,
                                  resolve_device(cfg.device), progress)
        return generator, None

    def trial_metrics(self, report: dict) -> dict[str, float]:
        u, rt = report["unlearned"], report["retrain"]
        m = {k: float(u[k]) for k in (*CORE, "RTE_s")}
        for k in CORE:
            m[f"gap_{k}"] = abs(u[k] - rt[k])
        return m

    def format_table(self, report: dict) -> str:
        lines = [f"{'generator':<10} {'forget_acc':>10} {'retained_acc':>12} {'fid':>9} {'RTE_s':>8}"]
        for role in ("original", "retrain", "unlearned"):
            m = report[role]
            rte = f"{m['RTE_s']:>8.1f}" if "RTE_s" in m else f"{'':>8}"
            lines.append(f"{role:<10} {m['forget_acc']:>10.2f} {m['retained_acc']:>12.2f} {m['fid']:>9.3f} {rte}")
        lines.append("forget_acc: % of forget-class samples classified as the forget class (want ~0); "
                     "retained_acc: mean per retained class (want as original)")
        return "\n".join(lines)


TASK = Diffusion()
