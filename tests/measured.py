"""The trained quantities the suite's thresholds rest on, computed one way for the tests and for
``benchmarks/margins.py``, which measures each on seeds 0-4 in every ``cpu-matrix`` cell.

The margin rule (README, "Tests"): a threshold on a trained number lies at least three spreads
(the sample std over every seed and cell) beyond the worst value measured, and the measured range
is written beside it."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from orchestrator.tasks.classification.config import RunConfig
from orchestrator.training import TrainRecipe

# Small but real: ResNet-8 at width 8 on the bundled MNIST digits, 4 epochs (~95% test
# accuracy), without augmentation or weight decay: the model fits its training set more
# tightly than the test set, as large models do, so that the membership attack (MIA) tells
# members from non-members. (With augmentation a model this small scores alike on both, and
# the attack's verdict on a forgotten class flips between 0 and 100 from one CPU to the next.)
TINY_RECIPE = TrainRecipe(epochs=4, lr=0.1, batch_size=128, weight_decay=0.0, augment=False)
TINY_WIDTH = 8
TINY_FLAGS = ("--width", str(TINY_WIDTH), "--train-epochs", str(TINY_RECIPE.epochs), "--train-weight-decay", "0",
              "--train-augment", "false")
TINY_YAML = f"width: {TINY_WIDTH}\nrecipe: {{epochs: {TINY_RECIPE.epochs}, weight_decay: 0.0, augment: false}}"
SEEDS = (0, 1, 2)  # a test's mean is over these; the margins are measured on 0-4

# Baseline knobs that forget the class within seconds on the tiny model (published defaults
# are for ResNet-18). SSD sits between two cliffs here: alpha <= 120 collapsed the model to
# chance on a seed, alpha >= 300 selected nothing that matters on 2 of 4 seeds (plain-1t);
# 200 forgot on all of them. The margins were measured with these knobs, including the
# data pipelines of before the baselines followed their references (SSD's augmented
# importances, labels drawn once, weight decay outside SalUn's mask): they stay pinned here.
FAST = {"finetune": {"epochs": 1, "lr": 0.05}, "grad_ascent": {"epochs": 3, "lr": 2e-3},
        "random_label": {"epochs": 1, "lr": 0.05, "relabel": "once"}, "l1_sparse": {"epochs": 1, "lr": 0.05},
        "salun": {"epochs": 1, "lr": 0.05, "relabel": "once", "outside_mask": "decay"},
        "ssd": {"alpha": 200.0, "dampening": 0.1, "importance_data": "augmented", "batch_size": 256}}


def torch_threads(default: int) -> int:
    """Torch threads for a test: OMP_NUM_THREADS where it is set (the cpu-matrix cells), else ``default``."""
    return int(os.environ.get("OMP_NUM_THREADS") or default)


@contextmanager
def as_in_a_trial():
    """Torch threads as a one-CPU Ray trial runs them (Ray exports OMP_NUM_THREADS=1 unless it is
    set), so that a model evaluated here gives bit for bit what its trial logged."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads(1))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_config(forget: str = "class:3", seed: int = 0, method: str = "scissorhands", **knobs) -> RunConfig:
    from orchestrator.methods import get_method

    return RunConfig(model="resnet8", width=TINY_WIDTH, forget=forget, seed=seed, recipe=TINY_RECIPE, method=method,
                     knobs=get_method(method).config(**knobs))


def classwise_report(method: str, seed: int, cache: Path, **knobs) -> dict:
    """One run of ``method`` forgetting digit 3 from the tiny model (references cached in ``cache``)."""
    from orchestrator.trial import run_unlearning

    return run_unlearning(tiny_config("class:3", seed, method, **knobs), cache, progress=False).report


def forget_gap(m: dict, retrain: dict) -> float:
    return (abs(m["UA"] - retrain["UA"]) + abs(m["MIA"] - retrain["MIA"])) / 2


def baseline_quantities(report: dict) -> dict[str, float]:
    """How far a baseline moved from the original toward the retrain model on the forget set."""
    o, u, rt = report["original"], report["unlearned"], report["retrain"]
    return {"ua_gain": u["UA"] - o["UA"], "forget_gap_gain": forget_gap(o, rt) - forget_gap(u, rt)}


def cli_report(out_dir: Path, cache: Path, name: str, *argv: str) -> dict:
    """``scissorhands unlearn`` exactly as a user runs it (the tiny model, seed 0 unless given), its JSON."""
    from orchestrator.cli import main

    out = Path(out_dir) / f"{name}.json"
    assert main(["unlearn", *TINY_FLAGS, "--no-progress", "--cache-dir", str(cache), "--json", str(out), *argv]) == 0
    return json.loads(out.read_text())


def classwise_quantities(report: dict) -> dict[str, float]:
    """A class-wise run with the default knobs (preset auto), as the end-to-end test reads it."""
    o, u, rt = report["original"], report["unlearned"], report["retrain"]
    return {"original_UA": o["UA"], "UA": u["UA"], "RA_gap": abs(u["RA"] - rt["RA"]),
            "improvement": report["avg_gap_original"] - report["avg_gap"]}


def mean(values) -> float:
    return float(np.mean(list(values)))




def tiny_space_spec(**options):
    """``tests/spaces.tiny_space`` as the sweep tests load it."""
    import tempfile

    from orchestrator.sweep.spec import load_spec
    from tests.spaces import tiny_space

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "tiny.yaml")
        path.write_text(tiny_space(**options))
        return load_spec(path)


def build_references_here(spec, cache: Path) -> None:
    """Every reference of ``spec``'s seeds, trained in this process (test fixtures prepare a
    cache before a sweep; a sweep builds them as Ray tasks)."""
    for seed in spec.seeds:
        spec.task_contract.build_references(spec.run_config({}, seed), cache, progress=False)


def tiny_space_run(seed: int, cache: Path, point: dict, on_epoch=None, **options):
    from orchestrator.trial import run_unlearning

    return run_unlearning(tiny_space_spec(**options).run_config(point, seed), cache, progress=False,
                          on_epoch=on_epoch)


def pick_space_improvement(seed: int, cache: Path, trim_ratio: float, lr: float) -> float:
    """Avg. Gap improvement over the original of one point of the pick test's space (the tiny
    space on the tiny recipe) on one seed: what ``pick`` validates on held-out seeds."""
    from tests.spaces import PICK

    report = tiny_space_run(seed, cache, {"trim_ratio": trim_ratio, "lr": lr}, **PICK).report
    return report["avg_gap_original"] - report["avg_gap"]


# The faulty sweep's points (the tiny space on the tiny recipe, one repair epoch): one that
# repairs, one whose repair the early-stopping rule prunes (90% of the late layers' most
# sensitive weights re-initialised, then an lr too small to recover).
HEALTHY, COLLAPSED = {"trim_ratio": 0.01, "lr": 0.005}, {"trim_ratio": 0.9, "lr": 1e-4}


def first_epoch_retain_acc(seed: int, cache: Path, point: dict) -> float:
    """What the early-stopping rule reads after the first repair epoch (a run that goes on to
    collapse is read all the same: the rule stops it there)."""
    from orchestrator.errors import DivergenceError

    epochs = []
    try:
        tiny_space_run(seed, cache, point, model=TINY_YAML, on_epoch=epochs.append)
    except DivergenceError:
        pass
    return epochs[0]["train_acc_retain"]


def diffusion_tiny():
    """The diffusion tests' tiny run: 8x8 digits, a 2-level UNet, a few hundred steps."""
    from orchestrator.tasks.class_erasure.config import ClassifierRecipe, DiffusionRunConfig, GeneratorRecipe
    from orchestrator.methods.scissorhands_diffusion import ScissorhandsDiffusionConfig

    return DiffusionRunConfig(
        image_size=8,
        generator=GeneratorRecipe(widths=(16, 32), attention_head_dim=8, steps=250, batch_size=32, warmup_steps=20,
                                  ema_decay=0.98),
        classifier=ClassifierRecipe(epochs=3),
        # One anchor class for the forget class (the default, a random retained class per sample,
        # erased 12.5-50 points in 30 steps on this generator: too little for a margin).
        knobs=ScissorhandsDiffusionConfig(score_batches=2, score_batch_size=32, trim_ratio=0.01, anchor_class=8,
                                          epochs=2, steps_per_epoch=15, batch_size=32, lr=1e-3),
        # 8 samples a class: forget_acc in steps of 12.5 points
        samples_per_class=8, ddim_steps=8, grid_columns=4, device="cpu",
    )


def erasure_quantities(result) -> dict[str, float]:
    """What a class erasure did to the generator: the forget class's share of samples that
    still show it (drop), the other classes' (change), and the evaluation classifier."""
    o, u = result.report["original"], result.report["unlearned"]
    return {"forget_acc_drop": o["forget_acc"] - u["forget_acc"],
            "retained_acc_change": abs(u["retained_acc"] - o["retained_acc"]),
            "classifier_test_acc": result.extras["classifier"]["test_acc"]}


def class_task(cfg, anchor_class=None):
    """The class-conditional erasure task of ``cfg`` (digits at the run's size, its noise schedule)."""
    from orchestrator.datasets import load_dataset
    from orchestrator.datasets.images import resize_uint8
    from orchestrator.forget import ForgetSpec, split_forget
    from orchestrator.diffusion.images import to_signed
    from orchestrator.diffusion.sampling import alphas_cumprod
    from orchestrator.tasks.class_erasure.data import ClassTask

    data = split_forget(load_dataset("mnist5k"), ForgetSpec.parse(cfg.forget), cfg.seed)
    return ClassTask(
        to_signed(resize_uint8(data.x_forget, cfg.image_size)), cfg.forget_class(),
        to_signed(resize_uint8(data.x_retain, cfg.image_size)), data.y_retain, 10,
        alphas_cumprod(cfg.generator.noise_schedule, cfg.generator.train_timesteps), cfg.generator.p_uncond,
        anchor_class,
    )


def original_unet(cfg, result):
    import torch

    from orchestrator.diffusion.unet import build_class_unet

    unet = build_class_unet(cfg.generator, cfg.image_size, 1, 10)
    unet.load_state_dict(torch.load(Path(result.extras["references"]["original"]) / "model.pt", weights_only=True))
    return unet.eval()


def probe_gap(unet, task, anchor: int, seed: int = 0) -> tuple[float, float]:
    """Mean squared distance between eps(x_t, forget) and eps(x_t, anchor) on fixed noised
    forget images, and eps(x_t, forget)'s denoising loss."""
    import torch
    import torch.nn.functional as F

    from orchestrator.diffusion.sampling import q_sample

    g = torch.Generator().manual_seed(seed)
    x0 = task.x_forget[:128]
    t = torch.randint(0, len(task.abar), (len(x0),), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    x_t = q_sample(x0, t, noise, task.abar)
    with torch.no_grad():
        e_f = unet(x_t, t, class_labels=torch.full((len(x0),), task.forget_class)).sample
        e_a = unet(x_t, t, class_labels=torch.full((len(x0),), anchor)).sample
    return float(F.mse_loss(e_f, e_a)), float(F.mse_loss(e_f, noise))


def repair_quantities(cfg, original, seed: int = 0) -> dict[str, float]:
    """The two repairs on the original generator: anchor (forget class mapped onto class 8,
    projected) shrinks the probe gap; ascent raises the forget class's denoising loss."""
    import copy

    import torch

    from orchestrator.tasks.class_erasure.config import with_knobs
    from orchestrator.methods import get_method

    method = get_method("scissorhands_diffusion")
    task = class_task(cfg, anchor_class=8)
    gap0, loss0 = probe_gap(original, task, 8)
    anchor = with_knobs(cfg, anchor_class=8, forget_weight=1.0, epochs=2, steps_per_epoch=15, projection=True)
    res = method.run(copy.deepcopy(original), task, anchor.knobs, torch.Generator().manual_seed(seed))
    gap1, _ = probe_gap(res.model, task, 8)
    ascent = with_knobs(cfg, repair="ascent", forget_weight=1.0, epochs=2, steps_per_epoch=15)
    res2 = method.run(copy.deepcopy(original), task, ascent.knobs, torch.Generator().manual_seed(seed))
    _, loss1 = probe_gap(res2.model, task, 8)
    return {"anchor_gap_ratio": gap1 / gap0, "ascent_loss_ratio": loss1 / loss0,
            "projection_rates_ok": float(all(0.0 <= h["projection_rate"] <= 1.0 for h in res.history))}


def build_tiny_sd(root: Path) -> Path:
    """A tiny StableDiffusionPipeline from configs: UNet2DConditionModel, CLIP text model, a CLIP
    tokenizer over a small vocabulary written here, AutoencoderKL and DDIM; saved to ``root/pipe``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok = root / "tokenizer-src"
    tok.mkdir(parents=True, exist_ok=True)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tokenizer = CLIPTokenizer(str(tok / "vocab.json"), str(tok / "merges.txt"), model_max_length=12)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ))
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",), block_out_channels=(16,), latent_channels=4, norm_num_groups=8,
            sample_size=8,
        )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root / "pipe")
    return root / "pipe"


# The text-to-image run on that pipeline, as flags.
SD_FLAGS = ("--pretrained {pipe} --trim-modules attn2 --score-batches 2 --epochs 2 --steps-per-epoch 10 --lr 1e-3 "
            "--ddim-steps 4 --samples-per-prompt 4 --device cpu")


def sd_gap_ratio(root: Path, cache: Path, seed: int) -> float:
    """How far the forget prompts' noise predictions moved onto the anchor's (1: not at all)."""
    from orchestrator.cli import main

    out = root / "sd.json"
    argv = ["unlearn", "--task", "text_to_image", *SD_FLAGS.format(pipe=build_tiny_sd(root)).split(), "--forget-prompt",
            "a cat", "--forget-prompt", "a kitten", "--anchor-prompt", "a dog", "--seed", str(seed),
            "--cache-dir", str(cache), "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    return json.loads(out.read_text())["unlearned"]["gap_ratio"]


# The bundled text-to-image pipeline at test size: 8x8 digits, 1x4x4 latents, a 2-level UNet (its
# samples show their prompt's digit 12-16% of the time: no erasure margin is measurable on it).
T2I_TINY = {"image_size": 8, "autoencoder": {"widths": [16, 32], "steps": 100},
            "generator": {"widths": [32, 32], "attention_head_dim": 8, "steps": 200, "batch_size": 32,
                          "warmup_steps": 20, "ema_decay": 0.98},
            "classifier": {"epochs": 3}, "eval_samples_per_prompt": 8, "ddim_steps": 8, "grid_columns": 4,
            "device": "cpu"}
T2I_KNOBS = {"score_batches": 2, "score_batch_size": 32, "epochs": 2, "steps_per_epoch": 15, "batch_size": 32,
             "lr": 1e-3}


def t2i_config(seed: int, method: str = "scissorhands_diffusion", **knobs):
    from orchestrator.tasks.text_to_image.config import TextToImageRunConfig

    return TextToImageRunConfig.from_dict({**T2I_TINY, "seed": seed, "method": method, "knobs": knobs})


def t2i_report(seed: int, cache: Path, method: str = "scissorhands_diffusion", **knobs) -> dict:
    from orchestrator.tasks import get_task

    return get_task("text_to_image").run(t2i_config(seed, method, **knobs), cache, progress=False).report


def t2i_quantities(report: dict) -> dict[str, float]:
    """What the erasure test asserts: how far forget_acc fell and retained_acc moved (points)."""
    o, u = report["original"], report["unlearned"]
    return {"forget_acc_drop": o["forget_acc"] - u["forget_acc"],
            "retained_acc_change": abs(o["retained_acc"] - u["retained_acc"]), "original_forget_acc": o["forget_acc"],
            "retrain_forget_acc": report["retrain"]["forget_acc"]}
