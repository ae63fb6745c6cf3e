"""Text-to-image: erase a concept from a Stable Diffusion pipeline: the bundled digits pipeline
(trained here, ``digits.py``) or a local diffusers folder (``--pretrained DIR``).

No hub access: a local pipeline is loaded with ``local_files_only=True``. Only the UNet changes;
the text encoder, tokenizer and VAE stay frozen.

Data. The bundled pipeline's D_f are the concept's real training images (as latents, under the
captions that name them), D_r the other images under their captions. A text concept of a local
pipeline has no image set, so the run makes its own, as concept-erasure methods do: the original
pipeline generates ``samples_per_prompt`` latents (DDIM, the run's guidance scale) for every
forget prompt (D_f) and every retain prompt (D_r; default: the anchor prompt alone).

Evaluation of the bundled pipeline, as ESD and the Scissorhands paper measure object erasure: an
evaluation classifier labels ``eval_samples_per_prompt`` samples of every forget and retained
prompt (same noise for every model): ``forget_acc`` (% of forget-prompt samples still showing the
concept), ``retained_acc`` (% of retained-prompt samples showing their digit) and ``fid`` (Frechet
distance of the classifier's features of retained-prompt samples to the original's); the original
and the retrain pipeline are the references, and ``eroded`` says why a run degraded the retained
prompts instead of erasing (:func:`eroded`). Every pipeline also gets the noise-prediction figures,
on fixed probes (x_t, t, noise) drawn once from ``eval_seed``:
- ``forget_anchor_gap``: mean MSE between eps(x_t, c_forget) and eps(x_t, c_anchor) on forget
  latents (erasure drives it toward 0); ``gap_ratio`` = unlearned / original.
- ``forget_loss`` / ``retain_loss``: the denoising MSE on D_f and D_r.
- ``retain_drift``: mean MSE between the unlearned and the original UNet's eps on retain probes.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.cache import Cached
from orchestrator.datasets import load_dataset
from orchestrator.datasets.images import resize_uint8
from orchestrator.diffusion.images import save_grid, to_uint8
from orchestrator.diffusion.sampling import ddim_sample, q_sample
from orchestrator.errors import FieldError, UserError
from orchestrator.forget import ForgetSpec, split_forget
from orchestrator.methods import method_for
from orchestrator.storage import atomic_write_bytes, content_key
from orchestrator.tasks import Task, TrialResult
from orchestrator.tasks.class_erasure.evaluation import sample_metrics
from orchestrator.tasks.class_erasure.references import get_classifier
from orchestrator.tasks.text_to_image import digits
from orchestrator.tasks.text_to_image.config import TextToImageRunConfig
from orchestrator.tasks.text_to_image.data import PromptTask
from orchestrator.training import resolve_device

CORE = ("forget_acc", "retained_acc", "fid")
EVAL_CODE_VERSION = 1
# The utility guard (README, "The utility guard"). Measured on the bundled pipeline (seeds 0-2):
# legitimate erasures keep fid 0.13-0.26 (retrain 0.11) and retained_acc within 1.7 points of the
# original's; ESD-u (fid 1.52-2.13, 11-18 points down) and SalUn (fid 8.2-9.1, 25-28 points down)
# degrade the retained prompts: the bounds lie between.
ERODED_RETAINED_DROP = 25.0
ERODED_FID_FACTOR = 3.0
ERODED_FID_FLOOR = 1.0


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


@dataclass
class Pipeline:
    """What a run uses of a Stable Diffusion pipeline: the UNet it changes, the frozen rest."""

    unet: nn.Module
    vae: nn.Module
    encode: PromptEncoder
    abar: torch.Tensor
    shape: tuple[int, ...]  # one latent


def pretrained_pipeline(path: str, device: torch.device) -> Pipeline:
    pipe = load_pipeline(path)
    size = pipe.unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    text_encoder = pipe.text_encoder.to(device).eval().requires_grad_(False)
    return Pipeline(pipe.unet.to(device).eval(), pipe.vae.to(device).eval().requires_grad_(False),
                    PromptEncoder(pipe.tokenizer, text_encoder, device),
                    pipe.scheduler.alphas_cumprod.float().to(device), (pipe.unet.config.in_channels, *size))


class Bundled:
    """The bundled digits pipeline of a config: its components, references and data split."""

    def __init__(self, cfg: TextToImageRunConfig, cache_dir: Path, device: torch.device, progress: bool,
                 build: bool):
        self.dataset = load_dataset(cfg.dataset, None, cfg.split_seed)
        self.data = split_forget(self.dataset, ForgetSpec.parse(f"class:{cfg.concept_label()}"),
                                 cfg.pipeline_seed)
        self.cfg, self.cache_dir, self.device, self.progress, self.build = cfg, cache_dir, device, progress, build
        self.tokenizer = digits.tokenizer()
        text_encoder = digits.text_encoder(cfg.pipeline_seed, len(self.tokenizer)).to(device)
        self.encode = PromptEncoder(self.tokenizer, text_encoder, device)
        self._unets: dict[str, Cached] = {}

    @functools.cached_property
    def vae(self) -> Cached:  # (the classifier's reference task does not wait for it)
        return digits.get_autoencoder(self.dataset, self.cfg.image_size, self.cfg.autoencoder, self.cfg.pipeline_seed,
                                      self.cache_dir, self.progress, self.build)

    @functools.cached_property
    def caption_embeddings(self) -> torch.Tensor:
        return self.encode(digits.caption_table(self.dataset.num_classes))

    def classifier(self) -> Cached:
        return get_classifier(self.dataset, self.cfg.image_size, self.cfg.classifier, self.cfg.pipeline_seed, self.cache_dir,
                              self.progress, self.build)

    def unet(self, role: str) -> Cached:
        """The role's UNet, loaded (or trained) once per run."""
        if role not in self._unets:
            self._unets[role] = digits.get_unet(role, self.data, self.cfg.image_size, self.cfg.generator, self.vae,
                                                self.caption_embeddings, self.cfg.pipeline_seed, self.cache_dir, self.device,
                                                self.progress, self.build)
        return self._unets[role]

    def pipeline(self) -> Pipeline:
        vae = self.vae.model.to(self.device).eval()
        abar = digits.scheduler(self.cfg.generator).alphas_cumprod.float().to(self.device)
        size = digits.latent_size(vae, self.cfg.image_size)
        shape = (vae.config.latent_channels, size, size)
        return Pipeline(copy.deepcopy(self.unet("original").model), vae, self.encode, abar, shape)

    def export(self, role: str) -> Path:
        """The role's pipeline as a diffusers StableDiffusionPipeline folder beside its UNet in the
        cache (written once, atomically): ``--pretrained DIR`` and ``diffusers`` load it."""
        from diffusers import StableDiffusionPipeline

        unet = self.unet(role)
        folder = unet.path / "pipeline"
        if unet.built and folder.exists():  # a rebuilt UNet's old folder
            shutil.rmtree(folder)
        if (folder / "model_index.json").is_file():
            return folder
        pipe = StableDiffusionPipeline(
            vae=self.vae.model, text_encoder=self.encode.text_encoder, tokenizer=self.tokenizer, unet=unet.model,
            scheduler=digits.scheduler(self.cfg.generator), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
        with tempfile.TemporaryDirectory(dir=unet.path) as tmp:
            pipe.save_pretrained(tmp)
            os.replace(tmp, folder)
            os.mkdir(tmp)  # (for TemporaryDirectory's cleanup)
        return folder

    def real_data(self, emb_anchor, emb_null, abar, forget_prompts, retain_prompts) -> PromptTask:
        """D_f: the concept's real images as latents under their naming captions; D_r: the others
        under the captions they were trained with."""
        caption, naming = digits.assign_captions(self.dataset.y_train, self.cfg.pipeline_seed)
        table = self.caption_embeddings
        f, r = self.data.forget_idx, self.data.retain_idx
        x = digits.encode_latents(self.vae.model, digits.images(self.dataset, self.cfg.image_size)).to(self.device)
        return PromptTask(x[f], table[naming[f]], x[r], table[caption[r]], emb_anchor, abar, forget_prompts, emb_null,
                          retain_prompts)


def user_classifier(cfg: TextToImageRunConfig, channels: int) -> nn.Module:
    """The evaluation classifier of a local pipeline's run: built, its weights loaded, its input
    normalised as ``eval_normalize`` (an hf:DIR folder: its own preprocessor_config.json) says."""
    from orchestrator.models import build_model, image_processor_stats, load_weights, preprocessing, read_state_dict

    name = cfg.eval_classifier
    classes = cfg.eval_classes
    if name.startswith("hf:") and classes is None:
        from transformers import AutoConfig

        classes = AutoConfig.from_pretrained(name.removeprefix("hf:"), local_files_only=True).num_labels
    model = build_model(name, channels, classes, cfg.eval_width)
    weights = cfg.eval_classifier_weights or name.removeprefix("hf:")
    load_weights(model, read_state_dict(weights, "--eval-classifier-weights"), "--eval-classifier-weights", weights)
    zeros = torch.zeros(1, channels, 1, 1)  # (no training split: only the channel count is read)
    if cfg.eval_normalize != "none":
        model.preprocess_as(preprocessing(cfg.eval_normalize, name, zeros))
    elif name.startswith("hf:") and image_processor_stats(name) is not None:
        model.preprocess_as(preprocessing(None, name, zeros))
    return model.eval()


def _generate(unet, emb: torch.Tensor, emb_null: torch.Tensor, per_prompt: int, shape, abar, cfg, generator):
    """``per_prompt`` latents for each prompt embedding (rows of ``emb``), and their conditions."""
    cond = emb.repeat_interleave(per_prompt, dim=0)
    noise = torch.randn((len(cond), *shape), generator=generator).to(emb.device)
    null = emb_null.expand(len(cond), -1, -1)
    lat = ddim_sample(_eps(unet), noise, cond, null, abar, cfg.ddim_steps, cfg.guidance_scale, clip=None)
    return lat, cond


class SampleEvaluation:
    """forget_acc / retained_acc / fid of a UNet's samples, labelled by an evaluation classifier:
    ``eval_samples_per_prompt`` samples of every forget and retained prompt from fixed noise
    (``eval_seed``); fid is the Frechet distance of the classifier's features of the retained
    prompts' samples to the original's (0 for the original itself)."""

    def __init__(self, classifier: nn.Module, pipe: Pipeline, prompts: list[str], labels: list[int],
                 forget_label: int, cfg: TextToImageRunConfig):
        self.classifier, self.pipe, self.cfg, self.forget_label = classifier, pipe, cfg, forget_label
        per = cfg.eval_samples_per_prompt
        self.emb, self.emb_null = pipe.encode(prompts), pipe.encode([""])
        self.labels = torch.tensor(labels).repeat_interleave(per)
        self.key = {"prompts": prompts, "labels": labels, "per_prompt": per, "guidance": cfg.guidance_scale,
                    "ddim_steps": cfg.ddim_steps, "eval_seed": cfg.eval_seed, "code": EVAL_CODE_VERSION}
        self.original_samples: torch.Tensor | None = None

    @torch.no_grad()
    def samples(self, unet) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.eval_seed)
        p = self.pipe
        lat, _ = _generate(unet, self.emb, self.emb_null, self.cfg.eval_samples_per_prompt, p.shape, p.abar, self.cfg,
                           g)
        return torch.cat([to_uint8(p.vae.decode(lat[i:i + 256] / p.vae.config.scaling_factor).sample.float()).cpu()
                          for i in range(0, len(lat), 256)])

    def metrics(self, samples: torch.Tensor) -> dict:
        size = self.cfg.eval_image_size
        sized = (lambda x: resize_uint8(x, size)) if size else (lambda x: x)  # noqa: E731
        keep = self.labels != self.forget_label
        m = sample_metrics(self.classifier, sized(samples), self.labels, self.forget_label,
                           sized(self.original_samples[keep]))
        m["fid"] = max(0.0, m["fid"])  # (the original against itself: rounding below 0)
        return {k: m[k] for k in CORE} | {"forget_pred_hist": m["forget_pred_hist"]}

    def grid(self, samples: torch.Tensor, path: Path) -> str:
        return str(save_grid(samples, self.labels, path, self.cfg.grid_columns))


def _unlearn(task: Task, cfg: TextToImageRunConfig, cache_dir: Path, artifact_dir: Path, progress: bool,
             build: bool, on_epoch: Callable[[dict], None] | None) -> TrialResult:
    device = resolve_device(cfg.device)
    bundled = Bundled(cfg, cache_dir, device, progress, build) if cfg.bundled else None
    pipe = bundled.pipeline() if bundled else pretrained_pipeline(cfg.pretrained, device)
    unet, encode = pipe.unet, pipe.encode
    forget_prompts, anchor_prompt, retain_prompts = cfg.prompts()
    emb_f, emb_r = encode(forget_prompts), encode(retain_prompts)
    emb_a, emb_null = encode([anchor_prompt]), encode([""])

    generator = torch.Generator().manual_seed(cfg.seed)
    if bundled:
        data = bundled.real_data(emb_a, emb_null, pipe.abar, emb_f, emb_r)
    else:  # no images of a text concept: the original pipeline's own samples are the data
        per = cfg.samples_per_prompt
        lat_f, cond_f = _generate(unet, emb_f, emb_null, per, pipe.shape, pipe.abar, cfg, generator)
        lat_r, cond_r = _generate(unet, emb_r, emb_null, per, pipe.shape, pipe.abar, cfg, generator)
        data = PromptTask(lat_f, cond_f, lat_r, cond_r, emb_a, pipe.abar, emb_f, emb_null, emb_r)
    probes_f = Probes(data.lat_forget, data.emb_forget, pipe.abar, cfg.eval_seed)
    probes_r = Probes(data.lat_retain, data.emb_retain, pipe.abar, cfg.eval_seed + 1)
    original = copy.deepcopy(unet).requires_grad_(False)
    m_original = _metrics(original, probes_f, probes_r, emb_a)

    method = method_for(cfg.method, task.name)
    layers = method.layers(unet, cfg.knobs)
    for role, names in layers.items():  # before the method runs: what it will change
        print(f"{role} layers ({len(names)} parameters): {', '.join(names)}", flush=True)
    result = method.run(unet, data, cfg.knobs, generator, on_epoch=on_epoch)
    m_unlearned = _metrics(result.model, probes_f, probes_r, emb_a)
    with torch.no_grad():
        m_unlearned["retain_drift"] = round(float(F.mse_loss(probes_r.eps(result.model), probes_r.eps(original))), 6)
    gap0 = m_original["forget_anchor_gap"]
    m_unlearned["gap_ratio"] = round(m_unlearned["forget_anchor_gap"] / gap0, 6) if gap0 > 0 else float("nan")
    metrics = {"original": m_original, "unlearned": m_unlearned, "retrain": None}

    artifact_dir.mkdir(parents=True, exist_ok=True)
    ev = _evaluation(cfg, bundled, pipe, forget_prompts, retain_prompts)
    if ev is not None:
        if bundled:
            refs = {role: bundled.unet(role) for role in ("original", "retrain")}
            ev.original_samples = _cached_samples(refs["original"], ev)
            for role, ref in refs.items():  # a reference's metrics are computed once, cached beside it
                samples = _cached_samples(ref, ev)
                metrics[role] = {**(metrics[role] or {}), **ref.metrics(ev.key, lambda s=samples: ev.metrics(s))}
                ev.grid(samples, artifact_dir / f"grid-{role}.png")
        else:  # the local pipeline is the original, sampled afresh
            ev.original_samples = ev.samples(original)
            metrics["original"].update(ev.metrics(ev.original_samples))
            ev.grid(ev.original_samples, artifact_dir / "grid-original.png")
        samples = ev.samples(result.model)
        metrics["unlearned"].update(ev.metrics(samples))
        ev.grid(samples, artifact_dir / "grid-unlearned.png")
        metrics["unlearned"]["eroded"] = eroded(metrics["original"], metrics["retrain"], metrics["unlearned"])
        artifacts = [str(artifact_dir / f"grid-{r}.png") for r in ("original", "retrain", "unlearned")
                     if metrics[r] is not None]
    else:  # grids: forget prompts (then the anchor) from the same noise, original vs unlearned
        print(f"note: {cfg.missing_evaluation()}", flush=True)
        g = torch.Generator().manual_seed(cfg.eval_seed)
        cols = min(cfg.grid_columns, 4)
        emb_grid = torch.cat([emb_f, emb_a])
        artifacts = []
        for name, net in (("original", original), ("unlearned", result.model)):
            g.manual_seed(cfg.eval_seed)
            lat, _ = _generate(net, emb_grid, emb_null, cols, pipe.shape, pipe.abar, cfg, g)
            artifacts.append(str(_decode_grid(pipe.vae, lat, artifact_dir / f"grid-{name}.png", cols)))

    report = task.report(metrics, result.seconds, cfg, keys=(*CORE, *PROMPT_METRICS), digits=6)
    if ev is not None:
        report["eroded"] = metrics["unlearned"]["eroded"]
        report["forget_pred_hist"] = metrics["unlearned"]["forget_pred_hist"]
    else:
        report["missing"] = cfg.missing_evaluation()
    if layers:
        report["layers"] = layers
    stats = {k: v for k, v in result.stats.items() if k != "trimmed_params"}
    extras = {
        **metrics, "artifacts": artifacts,
        "prompts": {"forget": forget_prompts, "anchor": anchor_prompt, "retain": retain_prompts},
        "trimmed_params": result.stats.get("trimmed_params", []), "forget_digest": content_key(forget_prompts),
        **stats,
    }
    return TrialResult(report, result.model, result.history, extras)


def _evaluation(cfg: TextToImageRunConfig, bundled: Bundled | None, pipe: Pipeline, forget_prompts: list[str],
                retain_prompts: list[str]) -> SampleEvaluation | None:
    """The classifier evaluation of the run's prompts (None: a local pipeline without a classifier)."""
    if bundled:
        k = cfg.concept_label()
        labels = [k] * len(forget_prompts) + [j for j in range(bundled.dataset.num_classes) if j != k
                                              for _ in digits.PHRASINGS]
        classifier = bundled.classifier().model
    elif cfg.eval_classifier:
        k, labels = cfg.forget_label, [cfg.forget_label] * len(forget_prompts) + list(cfg.retain_labels)
        classifier = user_classifier(cfg, pipe.vae.config.out_channels).to(pipe.abar.device)
    else:
        return None
    return SampleEvaluation(classifier, pipe, forget_prompts + retain_prompts, labels, k, cfg)


def _cached_samples(ref: Cached, ev: SampleEvaluation) -> torch.Tensor:
    """A reference UNet's evaluation samples, generated once and kept beside it."""
    path = ref.metrics_path(ev.key, ".samples.pt")
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception:
            pass  # a corrupt file is regenerated
    samples = ev.samples(ref.model)
    buf = io.BytesIO()
    torch.save(samples, buf)
    atomic_write_bytes(path, buf.getvalue())
    return samples


def eroded(original: dict, retrain: dict | None, unlearned: dict) -> str | None:
    """Why the unlearned pipeline has degraded the retained prompts rather than erased the concept
    (None: it has not): retained_acc more than ERODED_RETAINED_DROP points below the original's,
    or fid past ERODED_FID_FACTOR times the retrain pipeline's (a model trained on the same
    retained data without the concept) plus ERODED_FID_FLOOR."""
    drop = original["retained_acc"] - unlearned["retained_acc"]
    if drop > ERODED_RETAINED_DROP:
        return (f"retained_acc {unlearned['retained_acc']:.1f} is {drop:.1f} points below the original's "
                f"{original['retained_acc']:.1f} (bound {ERODED_RETAINED_DROP:g})")
    if retrain is not None:
        bound = ERODED_FID_FACTOR * retrain["fid"] + ERODED_FID_FLOOR
        if unlearned["fid"] > bound:
            return (f"fid {unlearned['fid']:.3f} to the original's retained samples exceeds {bound:.3f} "
                    f"({ERODED_FID_FACTOR:g} x the retrain pipeline's {retrain['fid']:.3f} + {ERODED_FID_FLOOR:g})")
    return None


class TextToImage(Task):
    name = "text_to_image"
    config_class = TextToImageRunConfig
    default_method = "scissorhands_diffusion"
    core_metrics = (*CORE, *PROMPT_METRICS)
    # gap_* are |metric - the retrain pipeline's|; avg_gap (forget_acc and retained_acc) is pick's verdict
    gap_metrics = ("gap_forget_acc", "gap_retained_acc", "gap_fid", "avg_gap")
    metrics = (*CORE, *gap_metrics, *PROMPT_METRICS, "RTE_s", "eroded")
    baseline_metrics = ("avg_gap_original",)
    utility_metric = "retained_acc"
    headline_metric = "avg_gap"
    headline_baseline = "avg_gap_original"
    headline_label = "Avg. Gap (forget_acc, retained_acc)"
    guard_metric = "eroded"
    time_metric = "RTE_s"
    table_metrics = CORE
    spec_recipes = {"recipe": "generator", "classifier": "classifier"}

    def reference_roles(self, cfg: TextToImageRunConfig) -> tuple[str, ...]:
        """The bundled pipeline's evaluation classifier and original / retrain UNets (the autoencoder
        comes with the first of them). A local pipeline is its own original: nothing to build."""
        cfg.validate()
        return ("classifier", "original", "retrain") if cfg.bundled else ()

    def reference_seed(self, cfg: TextToImageRunConfig) -> int:
        return cfg.pipeline_seed  # every seed of a sweep unlearns the same pipeline

    def build_reference(self, cfg: TextToImageRunConfig, role: str, cache_dir: Path, progress: bool = True):
        if role not in self.reference_roles(cfg):
            raise ValueError(f"task {self.name} has no reference {role!r} here")
        bundled = Bundled(cfg, Path(cache_dir), resolve_device(cfg.device), progress, True)
        if role == "classifier":
            return bundled.classifier(), None
        print(f"{role} pipeline: {bundled.export(role)}", flush=True)
        return bundled.unet(role), None

    def run(self, cfg: TextToImageRunConfig, cache_dir: Path, *, progress: bool = True,
            on_epoch: Callable[[dict], None] | None = None, artifact_dir: Path | None = None,
            build: bool = True) -> TrialResult:
        """Writes the sample grids (PNG) into ``artifact_dir`` (default ``<cache>/text_to_image-runs/<config
        key>``) and lists them in ``extras["artifacts"]``."""
        cfg.validate()
        artifact_dir = Path(artifact_dir) if artifact_dir else self.artifact_dir(cfg, cache_dir)
        with torch.random.fork_rng(devices=[]):
            return _unlearn(self, cfg, Path(cache_dir), artifact_dir, progress, build, on_epoch)

    def summary(self, metrics: dict[str, dict | None]) -> dict:
        u, o, rt = metrics["unlearned"], metrics["original"], metrics.get("retrain")
        if rt is None or "forget_acc" not in u:
            return {}
        return {"avg_gap": _avg_gap(u, rt), "avg_gap_original": _avg_gap(o, rt)}

    def run_tags(self, report: dict) -> dict[str, str]:
        return {f"eroded.seed{report['config']['seed']}": report["eroded"]} if report.get("eroded") else {}

    def trial_metrics(self, report: dict) -> dict[str, float]:
        u, rt = report["unlearned"], report.get("retrain")
        m = {k: float(u[k]) for k in (*CORE, *PROMPT_METRICS, "RTE_s") if k in u}
        if rt is not None:
            m.update({f"gap_{k}": abs(u[k] - rt[k]) for k in CORE})
            m["avg_gap"], m["avg_gap_original"] = report["avg_gap"], report["avg_gap_original"]
        if "eroded" in report:
            m["eroded"] = float(report["eroded"] is not None)
        return m

    def format_table(self, report: dict) -> str:
        lines = []
        if "forget_acc" in report["unlearned"]:
            lines.append(f"{'pipeline':<10} {'forget_acc':>10} {'retained_acc':>12} {'fid':>9} {'RTE_s':>8}")
            for role in ("original", "retrain", "unlearned"):
                m = report[role]
                if m is None:  # a local pipeline has no retrain reference
                    continue
                rte = f"{m['RTE_s']:>8.1f}" if "RTE_s" in m else f"{'':>8}"
                lines.append(f"{role:<10} {m['forget_acc']:>10.2f} {m['retained_acc']:>12.2f} {m['fid']:>9.3f} {rte}")
            lines.append("forget_acc: % of forget-prompt samples the classifier calls the concept (want as retrain); "
                         "retained_acc: % of retained-prompt samples showing their digit; fid: to the original's "
                         "retained samples")
            if report.get("eroded"):
                lines.append(f"eroded: {report['eroded']}: kept off the frontier, never picked")
        keys = ("forget_anchor_gap", "forget_loss", "retain_loss", "retain_drift")
        lines.append(f"{'unet':<10} " + " ".join(f"{k:>17}" for k in keys) + f" {'RTE_s':>8}")
        for role in ("original", "unlearned"):
            m = report[role]
            cells = " ".join(f"{m[k]:>17.6f}" if k in m else f"{'':>17}" for k in keys)
            rte = f"{m['RTE_s']:>8.1f}" if "RTE_s" in m else f"{'':>8}"
            lines.append(f"{role:<10} {cells} {rte}")
        lines.append(f"forget/anchor noise-prediction gap, unlearned / original: {report['unlearned']['gap_ratio']:.3f} "
                     "(want << 1)")
        return "\n".join(lines)


def _avg_gap(m: dict, retrain: dict) -> float:
    return round((abs(m["forget_acc"] - retrain["forget_acc"]) + abs(m["retained_acc"] - retrain["retained_acc"])) / 2,
                 4)


TASK = TextToImage()
