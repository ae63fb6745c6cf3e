"""Text-to-image: erase a concept from a local diffusers Stable Diffusion pipeline (``--pretrained DIR``).

No hub access: the pipeline is loaded with ``local_files_only=True``. Only the UNet changes;
the text encoder, tokenizer and VAE stay frozen.

Data. There is no image set for a text concept, so the run makes its own, as concept-erasure
methods do: the original pipeline generates ``sd_samples_per_prompt`` latents (DDIM, the
run's guidance scale) for every forget prompt (D_f) and every retain prompt (D_r; default:
the anchor prompt alone). The three Scissorhands stages then run unchanged
(``orchestrator.methods.scissorhands_diffusion``): scoring with the noise-prediction loss of
the forget prompts, trimming of the selected UNet modules, repair with
L_r + lambda * MSE(eps(x_t, c_forget), stopgrad eps(x_t, c_anchor)) (or ascent), optional projection.

Evaluation (no classifier exists for an arbitrary concept), on fixed probes (x_t, t, noise)
drawn once from ``eval_seed``:
- ``forget_anchor_gap``: mean MSE between eps(x_t, c_forget) and eps(x_t, c_anchor) on
  forget latents; erasure drives it toward 0 (the forget prompt behaves like the anchor).
  ``gap_ratio`` = unlearned / original.
- ``forget_loss`` / ``retain_loss``: the denoising MSE on D_f (forget prompts) and D_r.
- ``retain_drift``: mean MSE between the unlearned and the original UNet's eps on retain
  probes: how much the rest of the model moved (want small).
Sample grids (forget prompts, original vs unlearned, same noise) are decoded with the VAE.
"""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from orchestrator.diffusion.images import save_grid, to_uint8
from orchestrator.diffusion.sampling import ddim_sample, q_sample
from orchestrator.errors import FieldError, UserError
from orchestrator.methods import get_method
from orchestrator.storage import content_key
from orchestrator.tasks import Task, TrialResult
from orchestrator.tasks.text_to_image.config import TextToImageRunConfig
from orchestrator.tasks.text_to_image.data import PromptTask
from orchestrator.training import resolve_device


def load_pipeline(path: str | Path):
    """A local StableDiffusionPipeline (offline); a clear UserError if it is not one."""
    if importlib.util.find_spec("transformers") is None:
        raise UserError("--pretrained needs the 'transformers' package (pip install transformers)")
    from diffusers import StableDiffusionPipeline

    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(path), local_files_only=True, safety_checker=None, requires_safety_checker=False
        )
    except Exception as exc:
        raise FieldError("pretrained", str(path), "not a loadable StableDiffusionPipeline folder "
                         f"({type(exc).__name__}: {str(exc)[:300]})") from None
    return pipe


class PromptEncoder:
    def __init__(self, tokenizer, text_encoder, device):
        self.tokenizer, self.text_encoder, self.device = tokenizer, text_encoder, device

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0]


def _eps(unet):
    return lambda x, t, c: unet(x, t, encoder_hidden_states=c).sample


@torch.no_grad()
def _generate(unet, emb: torch.Tensor, emb_null: torch.Tensor, per_prompt: int, shape, abar, cfg, generator):
    """``per_prompt`` latents for each prompt embedding (rows of ``emb``), and their conditions."""
    cond = emb.repeat_interleave(per_prompt, dim=0)
    noise = torch.randn((len(cond), *shape), generator=generator).to(emb.device)
    null = emb_null.expand(len(cond), -1, -1)
    lat = ddim_sample(_eps(unet), noise, cond, null, abar, cfg.ddim_steps, cfg.guidance_scale, clip=None)
    return lat, cond


PROMPT_METRICS = ("forget_anchor_gap", "forget_loss", "retain_loss", "retain_drift", "gap_ratio")


class Probes:
    """Fixed (x_t, t, noise) on given latents, for before/after comparisons."""

    def __init__(self, lat: torch.Tensor, cond: torch.Tensor, abar: torch.Tensor, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.t = torch.randint(0, len(abar), (len(lat),), generator=g).to(lat.device)
        self.noise = torch.randn(lat.shape, generator=g).to(lat.device)
        self.x_t = q_sample(lat, self.t, self.noise, abar)
        self.cond = cond

    @torch.no_grad()
    def eps(self, unet, cond=None) -> torch.Tensor:
        return _eps(unet)(self.x_t, self.t, self.cond if cond is None else cond)


@torch.no_grad()
def _metrics(unet, pf: Probes, pr: Probes, emb_anchor) -> dict:
    e_f = pf.eps(unet)
    e_a = pf.eps(unet, emb_anchor.expand(len(pf.cond), -1, -1))
    return {
        "forget_anchor_gap": round(float(F.mse_loss(e_f, e_a)), 6),
        "forget_loss": round(float(F.mse_loss(e_f, pf.noise)), 6),
        "retain_loss": round(float(F.mse_loss(pr.eps(unet), pr.noise)), 6),
    }


@torch.no_grad()
def _decode_grid(vae, latents: torch.Tensor, path: Path, columns: int) -> Path:
    images = vae.decode(latents / vae.config.scaling_factor).sample
    images = to_uint8(images.float()).cpu()
    rows = torch.arange(len(images)) // columns
    return save_grid(images, rows, path, columns, scale=1)


def _unlearn(task: Task, cfg: TextToImageRunConfig, artifact_dir: Path,
             on_epoch: Callable[[dict], None] | None) -> TrialResult:
    device = resolve_device(cfg.device)
    pipe = load_pipeline(cfg.pretrained)
    unet, vae = pipe.unet.to(device).eval(), pipe.vae.to(device).eval()
    text_encoder = pipe.text_encoder.to(device).eval().requires_grad_(False)
    vae.requires_grad_(False)
    encode = PromptEncoder(pipe.tokenizer, text_encoder, device)
    abar = pipe.scheduler.alphas_cumprod.float().to(device)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    shape = (unet.config.in_channels, *size)

    forget_prompts = list(cfg.forget_prompts)
    retain_prompts = list(cfg.retain_prompts) or [cfg.anchor_prompt]
    emb_f, emb_r = encode(forget_prompts), encode(retain_prompts)
    emb_a, emb_null = encode([cfg.anchor_prompt]), encode([""])

    generator = torch.Generator().manual_seed(cfg.seed)
    per = cfg.samples_per_prompt
    lat_f, cond_f = _generate(unet, emb_f, emb_null, per, shape, abar, cfg, generator)
    lat_r, cond_r = _generate(unet, emb_r, emb_null, per, shape, abar, cfg, generator)
    probes_f = Probes(lat_f, cond_f, abar, cfg.eval_seed)
    probes_r = Probes(lat_r, cond_r, abar, cfg.eval_seed + 1)
    original = copy.deepcopy(unet).requires_grad_(False)
    m_original = _metrics(original, probes_f, probes_r, emb_a)

    data = PromptTask(lat_f, cond_f, lat_r, cond_r, emb_a, abar, emb_f, emb_null)
    method = get_method(cfg.method)
    layers = method.layers(unet, cfg.knobs)
    for role, names in layers.items():  # before the method runs: what it will change
        print(f"{role} layers ({len(names)} parameters): {', '.join(names)}", flush=True)
    result = method.run(unet, data, cfg.knobs, generator, on_epoch=on_epoch)
    m_unlearned = _metrics(result.model, probes_f, probes_r, emb_a)
    with torch.no_grad():
        m_unlearned["retain_drift"] = round(float(F.mse_loss(probes_r.eps(result.model), probes_r.eps(original))), 6)
    gap0 = m_original["forget_anchor_gap"]
    m_unlearned["gap_ratio"] = round(m_unlearned["forget_anchor_gap"] / gap0, 6) if gap0 > 0 else float("nan")

    # Grids: forget prompts (then the anchor) from the same noise, original vs unlearned.
    g = torch.Generator().manual_seed(cfg.eval_seed)
    cols = min(cfg.grid_columns, 4)
    emb_grid = torch.cat([emb_f, emb_a])
    artifacts = []
    for name, net in (("original", original), ("unlearned", result.model)):
        g.manual_seed(cfg.eval_seed)
        lat, _ = _generate(net, emb_grid, emb_null, cols, shape, abar, cfg, g)
        artifacts.append(str(_decode_grid(vae, lat, Path(artifact_dir) / f"grid-{name}.png", cols)))

    # No retrain reference exists for a pretrained text-to-image model.
    report = task.report({"original": m_original, "unlearned": m_unlearned}, result.seconds, cfg,
                         keys=PROMPT_METRICS, digits=6)
    if layers:
        report["layers"] = layers
    stats = {k: v for k, v in result.stats.items() if k != "trimmed_params"}
    extras = {
        "original": m_original, "unlearned": m_unlearned, "artifacts": artifacts,
        "prompts": {"forget": forget_prompts, "anchor": cfg.anchor_prompt, "retain": retain_prompts},
        "trimmed_params": result.stats.get("trimmed_params", []), "forget_digest": content_key(forget_prompts),
        **stats,
    }
    return TrialResult(report, result.model, result.history, extras)


class TextToImage(Task):
    name = "text_to_image"
    config_class = TextToImageRunConfig
    default_method = "scissorhands_diffusion"
    core_metrics = PROMPT_METRICS
    metrics = (*PROMPT_METRICS, "RTE_s")
    gap_metrics = ()  # no retrain reference exists for a pretrained text-to-image model
    utility_metric = None
    headline_metric = None  # no retrain reference, so no gap to it: pick cannot validate
    time_metric = "RTE_s"
    table_metrics = ()
    spec_recipes = {}

    def reference_roles(self, cfg: TextToImageRunConfig) -> tuple[str, ...]:
        """Nothing to train: the user's pipeline is the original; its metrics come with each run."""
        cfg.validate()
        return ()

    def build_reference(self, cfg: TextToImageRunConfig, role: str, cache_dir: Path, progress: bool = True):
        raise ValueError(f"task {self.name} has no reference {role!r}")

    def run(self, cfg: TextToImageRunConfig, cache_dir: Path, *, progress: bool = True,
            on_epoch: Callable[[dict], None] | None = None, artifact_dir: Path | None = None,
            build: bool = True) -> TrialResult:
        """Writes the sample grids (PNG) into ``artifact_dir`` (default ``<cache>/text_to_image-runs/<config
        key>``) and lists them in ``extras["artifacts"]``."""
        cfg.validate()
        artifact_dir = Path(artifact_dir) if artifact_dir else self.artifact_dir(cfg, cache_dir)
        with torch.random.fork_rng(devices=[]):
            return _unlearn(self, cfg, artifact_dir, on_epoch)

    def trial_metrics(self, report: dict) -> dict[str, float]:
        return {k: float(report["unlearned"][k]) for k in self.metrics}

    def format_table(self, report: dict) -> str:
        keys = ("forget_anchor_gap", "forget_loss", "retain_loss", "retain_drift")
        lines = [f"{'unet':<10} " + " ".join(f"{k:>17}" for k in keys) + f" {'RTE_s':>8}"]
        for role in ("original", "unlearned"):
            m = report[role]
            cells = " ".join(f"{m[k]:>17.6f}" if k in m else f"{'':>17}" for k in keys)
            rte = f"{m['RTE_s']:>8.1f}" if "RTE_s" in m else f"{'':>8}"
            lines.append(f"{role:<10} {cells} {rte}")
        lines.append(f"forget/anchor noise-prediction gap, unlearned / original: {report['unlearned']['gap_ratio']:.3f} "
                     "(want << 1)")
        return "\n".join(lines)


TASK = TextToImage()
