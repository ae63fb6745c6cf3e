"""Models: CIFAR-style ResNets in plain torch (no torchvision), registered by name; a user's
own model from ``MODULE:FUNCTION``; a local Hugging Face image classifier from ``hf:DIR``;
and loading a user's weights (a state_dict file or an MLflow model URI) into any of them.

Parameter names of the ResNets follow the reference code (conv1, bn1, layer1..layerN, fc) so
the paper's layer patterns ("layer3", "layer4", "fc") apply unchanged. Input normalisation
lives in the model (buffers), so a saved model is usable on raw [0, 1] images; a user's
model sits inside :class:`Normalized` as ``net``, so its own state_dict keys stay loadable.
"""
from __future__ import annotations

import hashlib
import importlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.errors import FieldError, UserError
from orchestrator.registry import Registry


NORMALIZE_HELP = ("dataset (the training split's per-channel mean / std) | none (x / 255 as it is) | MEAN,STD "
                  "(one value each for every channel, or C means then C stds); default dataset, hf:DIR: the "
                  "folder's preprocessor_config.json where it has one")


def parse_normalize(value: str | None) -> str | tuple[float, ...] | None:
    """``--normalize``: None (the model's default), ``dataset``, ``none`` or the given numbers."""
    if value is None or value in ("dataset", "none"):
        return value
    try:
        numbers = tuple(float(v) for v in str(value).split(","))
    except ValueError:
        numbers = ()
    if len(numbers) < 2 or len(numbers) % 2 or not all(math.isfinite(v) for v in numbers):
        raise FieldError("normalize", value, "allowed dataset, none, MEAN,STD or C means then C stds (e.g. "
                         "0.485,0.456,0.406,0.229,0.224,0.225)")
    if min(numbers[len(numbers) // 2:]) <= 0:
        raise FieldError("normalize", value, "every STD must be > 0")
    return numbers


@dataclass(frozen=True)
class Preprocessing:
    """What a model's input goes through: ``x / 255``, then ``(x - mean) / std`` per channel.
    ``rule``: dataset (the training split's), none, given (``--normalize MEAN,STD``) or
    image_processor (a Hugging Face folder's ``preprocessor_config.json``)."""

    rule: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_dict(self) -> dict:
        return {"normalize": self.rule, "mean": [round(v, 6) for v in self.mean], "std": [round(v, 6) for v in self.std]}

    def describe(self) -> str:
        numbers = lambda v: ",".join(f"{x:.4g}" for x in v)  # noqa: E731
        return f"(x / 255 - [{numbers(self.mean)}]) / [{numbers(self.std)}] (--normalize {self.rule})"


def image_processor_stats(name: str) -> tuple[str, tuple, tuple] | None:
    """A Hugging Face folder's own normalisation (``preprocessor_config.json``), if it has one."""
    path = _hf_folder(name) / "preprocessor_config.json"
    if not path.is_file():
        return None
    import json

    config = json.loads(path.read_text())
    if config.get("do_normalize") is False:
        return "none", (), ()
    mean, std = config.get("image_mean"), config.get("image_std")
    return ("image_processor", tuple(map(float, mean)), tuple(map(float, std))) if mean and std else None


def preprocessing(normalize: str | None, model: str, x_train: torch.Tensor) -> Preprocessing:
    """The preprocessing ``--normalize`` (None: the model's default) declares for ``x_train``
    (floats in [0, 1], NCHW)."""
    channels = x_train.shape[1]
    rule = parse_normalize(normalize)
    declared = image_processor_stats(model) if rule is None and model.startswith("hf:") else None
    if declared is not None:
        rule, mean, std = declared
    elif rule in (None, "dataset"):
        rule, mean, std = "dataset", x_train.mean(dim=(0, 2, 3)).tolist(), x_train.std(dim=(0, 2, 3)).tolist()
    elif rule == "none":
        mean, std = (), ()
    else:
        half = len(rule) // 2
        mean, std, rule = rule[:half], rule[half:], "given"
    if rule == "none":
        mean, std = (0.0,) * channels, (1.0,) * channels
    if len(mean) == 1:
        mean, std = tuple(mean) * channels, tuple(std) * channels
    if len(mean) != channels:
        source = "the folder's preprocessor_config.json" if rule == "image_processor" else f"--normalize {normalize}"
        each = f", or {channels} of each" if channels > 1 else ""
        raise UserError(f"{source}: {len(mean)} means and {len(std)} stds for images of {channels} channel(s); give "
                        f"one mean and one std{each}")
    return Preprocessing(rule, tuple(float(v) for v in mean), tuple(float(v) for v in std))


class NormalizesInput(nn.Module):
    """Per-channel input normalisation as buffers (:class:`Preprocessing`)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, in_channels, 1, 1))

    def preprocess_as(self, prep: Preprocessing) -> None:
        self.mean.copy_(torch.tensor(prep.mean).view_as(self.mean))
        self.std.copy_(torch.tensor(prep.std).clamp_min(1e-3).view_as(self.std))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(NormalizesInput):
    def __init__(self, blocks: list[int], widths: list[int], in_channels: int, num_classes: int):
        super().__init__(in_channels)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths), start=1):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(in_planes, w, stride=2 if (j == 0 and i > 1) else 1))
                in_planes = w
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.fc = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features; x is in [0, 1]."""
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        for i in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{i}")(out)
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@dataclass(frozen=True)
class ModelFamily:
    """A ``--model`` name (a built-in, or one added with :func:`register_model`): its builder
    and the defaults that go with it; one declaration per family (:func:`model_family`)."""

    name: str
    build: Callable[[int, int, int], nn.Module]  # (in_channels, num_classes, width) -> model
    default_width: int
    late_layers: tuple[str, ...]  # the paper's "last stages + fc" for this depth
    size: str  # "small" (CPU defaults) or "large"


FAMILIES: Registry[ModelFamily] = Registry("model", {})
OTHER_MODELS = (("MODULE:FUNCTION", "your factory"), ("hf:DIR", "local Hugging Face model"))  # beside the families


def register_model(family: ModelFamily) -> ModelFamily:
    """Make a model family available as ``--model NAME`` (the built-ins are declared below)."""
    return FAMILIES.add(family.name, family)


def unregister_model(name: str) -> None:
    """Forget a family added at run time."""
    FAMILIES.remove(name)


def model_family(name: str, *, default_width: int, late_layers: tuple[str, ...], size: str):
    """Declare a builder ``(in_channels, num_classes, width) -> nn.Module`` as model family ``name``."""
    def declare(build: Callable[[int, int, int], nn.Module]) -> Callable[[int, int, int], nn.Module]:
        register_model(ModelFamily(name, build, default_width, tuple(late_layers), size))
        return build
    return declare


def _widths(base: int, stages: int) -> list[int]:
    return [base * 2**i for i in range(stages)]


@model_family("resnet8", default_width=16, late_layers=("layer2", "layer3", "fc"), size="small")
def resnet8(in_channels: int, num_classes: int, width: int) -> ResNet:
    return ResNet([1, 1, 1], _widths(width, 3), in_channels, num_classes)


@model_family("resnet20", default_width=16, late_layers=("layer2", "layer3", "fc"), size="small")
def resnet20(in_channels: int, num_classes: int, width: int) -> ResNet:
    return ResNet([3, 3, 3], _widths(width, 3), in_channels, num_classes)


@model_family("resnet18", default_width=64, late_layers=("layer3", "layer4", "fc"), size="large")
def resnet18(in_channels: int, num_classes: int, width: int) -> ResNet:
    return ResNet([2, 2, 2, 2], _widths(width, 4), in_channels, num_classes)


def list_models() -> list[str]:
    """The model families' names (sorted, as ``list_methods``)."""
    return FAMILIES.names()


def model_help() -> str:
    """``resnet8 | resnet20 | resnet18 | MODULE:FUNCTION (your factory) | hf:DIR (...)``, in declaration order."""
    return " | ".join([*FAMILIES.loaded, *(f"{usage} ({what})" for usage, what in OTHER_MODELS)])


def is_family(name: str) -> bool:
    """``name`` is a declared family (not ``MODULE:FUNCTION`` or ``hf:DIR``)."""
    return name in FAMILIES.loaded


def get_model_family(name: str) -> ModelFamily:
    if not is_family(name):
        raise UserError(f"unknown model {name!r}; allowed: {', '.join(list_models())}, "
                        f"{' or '.join(usage for usage, _ in OTHER_MODELS)}")
    return FAMILIES.get(name)


class Normalized(NormalizesInput):
    """A user's (or Hugging Face) classifier behind the input normalisation the built-ins carry:
    ``net`` gets (x - mean) / std of the training split and returns logits [N, num_classes]."""

    def __init__(self, net: nn.Module, in_channels: int):
        super().__init__(in_channels)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.normalize(x))
        return getattr(out, "logits", out)  # Hugging Face models return an output object


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _import_factory(name: str, code_dir: str | None):
    """``MODULE:FUNCTION`` imported from ``code_dir`` (when this node has it) or the Python path."""
    module_name, _, function = name.partition(":")
    if code_dir and Path(code_dir).is_dir() and str(Path(code_dir).resolve()) not in sys.path:
        sys.path.insert(0, str(Path(code_dir).resolve()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UserError(f"--model {name}: cannot import module {module_name!r} ({_one_line(exc)}); put it on "
                        "PYTHONPATH or pass --code-dir DIR") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise UserError(f"--model {name}: module {module_name} ({module.__file__}) has no function {function!r}")
    return factory, module


def _hf_folder(name: str) -> Path:
    folder = Path(name.removeprefix("hf:"))
    if not (folder / "config.json").is_file():
        raise UserError(f"--model {name}: no config.json in {folder} (a local Hugging Face image-classification "
                        "model folder, as save_pretrained writes it)")
    return folder


def check_model(name: str, code_dir: str | None = None, width: int | None = None) -> None:
    """Everything about ``--model`` that needs no data: the name, the factory, the folder."""
    if code_dir is not None and not Path(code_dir).is_dir():
        raise FieldError("code_dir", code_dir, "no such directory")
    if name.startswith("hf:"):
        _hf_folder(name)
    elif ":" in name:
        _import_factory(name, code_dir)
    else:
        get_model_family(name)
    if width is not None and not is_family(name):
        raise FieldError("width", width, f"applies to the built-in ResNets only, not {name}")
    if width is not None and width < 1:
        raise FieldError("width", width, "must be a positive integer")


def model_size(name: str) -> str:
    """Built-ins by their size; any other model gets the reference code's values (``large``)."""
    return get_model_family(name).size if is_family(name) else "large"


def model_source(name: str, code_dir: str | None = None) -> str | None:
    """A content hash of the code (a user's module file) or config (a Hugging Face folder)
    a model is built from, for cache keys; None for the built-ins (the package version covers them)."""
    if is_family(name):
        return None
    if name.startswith("hf:"):
        path = _hf_folder(name) / "config.json"
    else:
        path = Path(_import_factory(name, code_dir)[1].__file__)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _build_user(name: str, in_channels: int, num_classes: int, code_dir: str | None) -> nn.Module:
    factory, _ = _import_factory(name, code_dir)
    try:
        net = factory(in_channels=in_channels, num_classes=num_classes)
    except Exception as exc:
        raise UserError(f"--model {name}: the factory raised {_one_line(exc)} (it is called as "
                        f"{name.partition(':')[2]}(in_channels={in_channels}, num_classes={num_classes}))") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"--model {name}: the factory returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _build_hf(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """A freshly initialised model of the folder's config (its weights are the default original)."""
    try:
        from transformers import AutoConfig, AutoModelForImageClassification
    except ImportError:
        raise UserError(f"--model {name}: needs transformers (pip install 'scissorhands-sweep[hf]')") from None

    folder = _hf_folder(name)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        net = AutoModelForImageClassification.from_config(config)
    except Exception as exc:
        raise UserError(f"--model {name}: not a Hugging Face image-classification model ({_one_line(exc)})") from None
    if config.num_labels != num_classes:
        raise UserError(f"--model {name}: the model has {config.num_labels} labels, the data {num_classes} classes")
    if getattr(config, "num_channels", in_channels) != in_channels:
        raise UserError(f"--model {name}: the model takes {config.num_channels} channels, the data has {in_channels}")
    return net


def build_model(name: str, in_channels: int, num_classes: int, width: int | None = None,
                code_dir: str | None = None) -> nn.Module:
    """A built-in ResNet; ``MODULE:FUNCTION`` (called as ``FUNCTION(in_channels=C, num_classes=K)``,
    returning an ``nn.Module`` that maps [N, C, H, W] floats to [N, K] logits); or ``hf:DIR``."""
    if is_family(name) or ":" not in name:
        family = get_model_family(name)
        width = width or family.default_width
        if width < 1:
            raise FieldError("width", width, "must be a positive integer")
        model = family.build(in_channels, num_classes, width)
        model.late_layers = family.late_layers
        return model
    if name.startswith("hf:"):
        net = _build_hf(name, in_channels, num_classes)
    else:
        net = _build_user(name, in_channels, num_classes, code_dir)
    model = Normalized(net, in_channels)
    model.late_layers = default_late_layers(model, num_classes)
    return model


def default_late_layers(model: nn.Module, num_classes: int | None = None) -> tuple[str, ...]:
    """The last third of the conv / linear modules in module order, plus the classifier head
    (every linear layer with ``num_classes`` outputs), wherever it is declared."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    late = [n for n, _ in layers[len(layers) - math.ceil(len(layers) / 3):]]
    heads = [n for n, m in layers if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return tuple(dict.fromkeys(late + heads))


def late_layers(model: nn.Module) -> tuple[str, ...]:
    """The modules Scissorhands trims and projects by default: the model's ``late_layers``
    if it declares them (every model :func:`build_model` builds does), else
    :func:`default_late_layers`."""
    return tuple(getattr(model, "late_layers", None) or default_late_layers(model))


WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def _weights_file(path: Path) -> Path:
    """A Hugging Face folder's weights file, or ``path`` itself."""
    if path.is_dir():
        for candidate in ("model.safetensors", "pytorch_model.bin"):
            if (path / candidate).is_file():
                return path / candidate
    return path


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def read_state_dict(source: str, flag: str) -> dict[str, torch.Tensor]:
    """A user's weights: a state_dict in ``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors``, a
    Hugging Face folder, or an MLflow model URI (``runs:/RUN/PATH``, ``models:/NAME@ALIAS``)."""
    if source.startswith(("runs:/", "models:/")):
        import mlflow.pytorch

        try:
            state = mlflow.pytorch.load_model(source).state_dict()
        except Exception as exc:
            raise UserError(f"{flag} {source}: cannot load the MLflow model ({_one_line(exc)})") from None
        return {k: v.detach().cpu() for k, v in state.items()}
    path = _weights_file(Path(source))
    if not path.is_file():
        raise UserError(f"{flag} {source}: file not found")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise UserError(f"{flag} {source}: allowed a state_dict file ({', '.join(WEIGHT_SUFFIXES)}), a Hugging Face "
                        "folder, runs:/RUN_ID/PATH or models:/NAME@ALIAS")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{flag} {source}: not a readable checkpoint ({_one_line(exc)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{flag} {source}: not a state_dict (a mapping of parameter names to tensors)")
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], flag: str, source: str) -> None:
    """Load a user's state_dict: into a :class:`Normalized` model's ``net`` (the user's own keys),
    or into the whole model (a checkpoint this tool wrote). A mismatch names the first missing
    or unexpected key and the shapes."""
    targets = [model, model.net] if isinstance(model, Normalized) else [model]
    target = next((t for t in targets if set(state) == set(t.state_dict())), targets[-1])
    expected = target.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"missing key {k!r} (the model's shape {list(expected[k].shape)})" for k in missing[:1]]
        parts += [f"unexpected key {k!r} (shape {list(state[k].shape)})" for k in unexpected[:1]]
        raise UserError(f"{flag} {source} does not fit the model: {'; '.join(parts)} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected)")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise UserError(f"{flag} {source} does not fit the model: key {key!r} has shape "
                            f"{list(state[key].shape)} in the checkpoint, {list(value.shape)} in the model")
    target.load_state_dict(state)
