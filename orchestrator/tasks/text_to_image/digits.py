"""The bundled text-to-image pipeline: a tiny Stable Diffusion model trained here, offline, on the
bundled digits with captions ("a handwritten digit three", "the number three", ...).

Built from the classes of a real SD v1 pipeline: a word-level ``CLIPTokenizer`` (its vocabulary
and merges written here: nothing to download) and ``CLIPTextModel`` (random, frozen: a fixed text
feature extractor, as SD's pretrained one is frozen), an ``AutoencoderKL`` (16x16 digits to 1x8x8
latents, trained here on the training split) and a ``UNet2DConditionModel`` with cross-attention
at SD's levels (so the ``attn1_up`` / ``attn2`` presets select what they select in SD v1),
trained with the class-erasure generator's recipe on the latents, conditioned on caption
embeddings (captions dropped to "" with ``p_uncond`` for classifier-free guidance).

The original UNet trains on every image, the retrain UNet on the images without the concept; both
share the autoencoder and text encoder (an image codec and a text encoder, not the concept's
model). Every component is cached in the reference cache by content hash.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from orchestrator.cache import Cached, cached_model
from orchestrator.datasets import Dataset
from orchestrator.datasets.images import resize_uint8
from orchestrator.diffusion.images import to_signed
from orchestrator.errors import need_field, need_positive_ints
from orchestrator.forget import UnlearnData
from orchestrator.tasks.class_erasure.config import GeneratorRecipe
from orchestrator.tasks.class_erasure.references import train_generator
from orchestrator.training import check_finite, cycle, shuffled

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = ("a handwritten digit {}", "the number {}", "a drawing of a {}")
GENERIC = "a handwritten digit"  # names no digit: the anchor a forgotten digit is mapped onto
P_GENERIC = 0.1  # share of training images captioned GENERIC
IMAGE_SIZES = (8, 16, 28, 32)
TEXT_WIDTH, TEXT_LAYERS, MAX_TOKENS = 64, 2, 16
# The random encoder's token embeddings at std 1 (CLIP's init: 0.02): at 0.02 the digit token's
# hidden state differs little between digits (cosine 0.93; std 1: 0.08), and the UNet confused
# 8 / 5 with 3 and 2 with 6 (retained-prompt accuracy 51% at guidance 3; std 1: 99.6%).
TOKEN_STD = 1.0
PIPELINE_CODE_VERSION = 2  # bump when the components or their training change


@dataclass(frozen=True)
class UNetRecipe(GeneratorRecipe):
    """The class-erasure generator's recipe for the latent UNet, with a schedule whose last
    alpha_bar is not ~0: unclipped latent DDIM divides by sqrt(alpha_bar) at its first step
    (squaredcos_cap_v2: 2.4e-9, which turned every sample into noise; scaled_linear: 7.3e-4, as
    SD v1's schedule is)."""

    noise_schedule: str = "scaled_linear"
    steps: int = 1000


@dataclass(frozen=True)
class AutoencoderRecipe:
    """The AutoencoderKL: reconstruction MSE + ``kl_weight`` * KL, Adam, then latents scaled to unit std."""

    widths: tuple[int, ...] = (32, 64)
    latent_channels: int = 1  # (4, as SD: retained-prompt accuracy 33% vs 51% at equal UNet steps, before TOKEN_STD)
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    kl_weight: float = 1e-6

    def validate(self) -> None:
        need_field(len(self.widths) >= 1 and all(w >= 8 and w % 8 == 0 for w in self.widths), self, "widths",
                   "need channel widths that are multiples of 8, e.g. 32 64")
        need_positive_ints(self, ("latent_channels", "steps", "batch_size"))
        need_field(self.lr > 0 and math.isfinite(self.lr), self, "lr", "must be a positive number")
        need_field(self.kl_weight >= 0, self, "kl_weight", "must be >= 0")


def concept_word(label: int) -> str:
    return WORDS[label]


def concept_prompts(label: int) -> list[str]:
    """Every phrasing that names digit ``label``."""
    return [p.format(WORDS[label]) for p in PHRASINGS]


def caption_table(num_classes: int) -> list[str]:
    """Index 0: the empty caption (guidance's null); 1: GENERIC; then each class's phrasings."""
    return ["", GENERIC, *(c for k in range(num_classes) for c in concept_prompts(k))]


def assign_captions(y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each training image's caption index (GENERIC for a P_GENERIC share) and its phrasing's index
    (the caption that names its digit, what a forget set is conditioned on), seeded."""
    g = torch.Generator().manual_seed(seed)
    phrasing = 2 + y * len(PHRASINGS) + torch.randint(len(PHRASINGS), (len(y),), generator=g)
    generic = torch.rand(len(y), generator=g) < P_GENERIC
    return torch.where(generic, torch.ones_like(phrasing), phrasing), phrasing


def tokenizer():
    """A word-level CLIPTokenizer over the captions' words: the BPE merges spell each word out
    letter by letter into one token (so a digit's name is one token, as in CLIP's vocabulary);
    any other word falls back to its letters. ``MAX_TOKENS`` long."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    merges = []
    words = sorted({w for caption in caption_table(len(WORDS)) for w in caption.split()})
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            pair = f"{pieces[0]} {pieces[1]}"
            if pair not in merges:
                merges.append(pair)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=MAX_TOKENS)
    unmerged = [w for w in words if len(tok.tokenize(w)) != 1]
    assert not unmerged, f"captions' words not single tokens: {unmerged}"  # merges of one word split another
    return tok


def text_encoder(seed: int, vocab_size: int) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
            num_hidden_layers=TEXT_LAYERS, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ))
        embedding = model.get_input_embeddings().weight
        with torch.no_grad():
            embedding.normal_(0.0, TOKEN_STD)
    return model.eval().requires_grad_(False)


def build_unet(recipe: GeneratorRecipe, latent_channels: int, latent_size: int) -> nn.Module:
    """SD v1's layout, small: cross-attention down / up blocks around a plain lowest level."""
    from diffusers import UNet2DConditionModel

    levels = len(recipe.widths)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        layers_per_block=recipe.layers_per_block, block_out_channels=tuple(recipe.widths),
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=TEXT_WIDTH, norm_num_groups=recipe.norm_groups,
        attention_head_dim=recipe.attention_head_dim,
    )


def scheduler(recipe: GeneratorRecipe):
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=recipe.train_timesteps, beta_schedule=recipe.noise_schedule,
                         clip_sample=False, set_alpha_to_one=True, steps_offset=1)


def images(dataset: Dataset, image_size: int, idx: torch.Tensor | None = None) -> torch.Tensor:
    x = dataset.x_train if idx is None else dataset.x_train[idx]
    return to_signed(resize_uint8(x, image_size))


def latent_size(vae: nn.Module, image_size: int) -> int:
    return image_size // 2 ** (len(vae.config.block_out_channels) - 1)


def get_autoencoder(dataset: Dataset, image_size: int, recipe: AutoencoderRecipe, seed: int, cache_dir: Path,
                    progress: bool = True, build: bool = True) -> Cached:
    """The AutoencoderKL trained on the whole training split; its latent scaling factor (1 / the
    latents' std, SD's convention) is kept in the entry's manifest."""
    from diffusers import AutoencoderKL

    spec = {"role": "t2i-autoencoder", "dataset": dataset.name, "data": dataset.fingerprint(),
            "image_size": image_size, "recipe": asdict(recipe), "seed": seed, "code": PIPELINE_CODE_VERSION}
    levels = len(recipe.widths)

    def make() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AutoencoderKL(
                in_channels=dataset.channels, out_channels=dataset.channels, latent_channels=recipe.latent_channels,
                down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                block_out_channels=tuple(recipe.widths), norm_num_groups=8, sample_size=image_size,
            )

    def train(vae: nn.Module) -> dict:
        x = images(dataset, image_size)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(vae.parameters(), lr=recipe.lr)
        batches = cycle(lambda: shuffled(len(x), recipe.batch_size, g))
        vae.train()
        bar = tqdm(range(recipe.steps), desc="train autoencoder", unit="step", disable=not progress, leave=False,
                   mininterval=2)
        for step in bar:
            xb = x[next(batches)]
            posterior = vae.encode(xb).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
            recon = vae.decode(z).sample
            loss = F.mse_loss(recon, xb) + recipe.kl_weight * posterior.kl().mean()
            check_finite(loss, f"in train autoencoder step {step}", f"lower --vae-lr (now {recipe.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 100 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        vae.eval()
        with torch.no_grad():
            latents = torch.cat([vae.encode(x[i:i + 512]).latent_dist.mean for i in range(0, len(x), 512)])
            recon_mse = float(F.mse_loss(vae.decode(latents[:512]).sample, x[:512]))
        return {"scaling_factor": float(1.0 / latents.std()), "recon_mse": recon_mse}

    cached = cached_model("t2i-autoencoder", spec, cache_dir, make, train, allow_build=build)
    cached.model.register_to_config(scaling_factor=cached.meta["info"]["scaling_factor"])
    cached.model.requires_grad_(False)
    return cached


@torch.no_grad()
def encode_latents(vae: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """SD's training latents: the posterior mean times the scaling factor (deterministic)."""
    return torch.cat([vae.encode(x[i:i + 512]).latent_dist.mean for i in range(0, len(x), 512)]) * \
        vae.config.scaling_factor


def get_unet(role: str, data: UnlearnData, image_size: int, recipe: GeneratorRecipe, vae: Cached,
             caption_embeddings: torch.Tensor, seed: int, cache_dir: Path, device: torch.device, progress: bool = True,
             build: bool = True) -> Cached:
    """The original (every image) or retrain (without the concept's images) UNet, trained on the
    autoencoder's latents conditioned on each image's caption embedding."""
    ds = data.dataset
    spec = {"role": f"t2i-{role}", "dataset": ds.name, "data": ds.fingerprint(), "image_size": image_size,
            "recipe": asdict(recipe),
            "autoencoder": vae.path.name, "text": {"width": TEXT_WIDTH, "layers": TEXT_LAYERS, "token_std": TOKEN_STD}, "seed": seed,
            "captions": {"phrasings": PHRASINGS, "generic": GENERIC, "p": P_GENERIC}, "code": PIPELINE_CODE_VERSION}
    if role == "retrain":
        spec["forget"], spec["forget_idx"] = str(data.forget), data.forget_digest()
    latent_channels = vae.model.config.latent_channels

    def make() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_unet(recipe, latent_channels, latent_size(vae.model, image_size))

    def train(unet: nn.Module) -> dict:
        idx = torch.arange(len(ds.y_train)) if role == "original" else data.retain_idx
        caption, _ = assign_captions(ds.y_train, seed)
        lat = encode_latents(vae.model, images(ds, image_size, idx)).to(device)
        table = caption_embeddings.to(device)
        conditioned = lambda net: lambda xt, t, c: net(xt, t, encoder_hidden_states=table[c]).sample  # noqa: E731
        ema, hist = train_generator(unet.to(device), lat, caption[idx].to(device), recipe, 0,
                                    torch.Generator().manual_seed(seed), desc=f"train {role} UNet",
                                    progress=progress, conditioned=conditioned)
        unet.load_state_dict(ema.state_dict())
        return {"loss": hist}

    cached = cached_model(f"t2i-{role}", spec, cache_dir, make, train, allow_build=build)
    cached.model.to(device)
    return cached
