"""Loading models: named models (the bundled SmolLM2, see named_models), local folders, hub ids
and random-init shapes.

This subpackage (`analysis.hf`) is the only place that imports transformers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ...kernels.limits import DTYPE_ALIASES, DTYPES
from ..files.distributed import DeviceMap
from ..files.fingerprint import ModelFingerprint
from .errors import ModelLoadError  # noqa: F401  (re-exported: callers catch models.ModelLoadError)
from .named_models import NAMED_MODELS, model_dir

BUNDLED_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class RandomShape:
    """Attention-relevant shape of a random-init model (vocab: ``RANDOM_VOCAB_SIZE``)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_positions: int
    rope_theta: float
    family: str = "llama"  # a key of RANDOM_FAMILIES
    extra: tuple = ()  # (name, value) pairs: the family's own config fields (head_dim, windows, ...)


# family -> (transformers config class, model class, attention implementation it is built with)
RANDOM_FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "sdpa"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "sdpa"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "sdpa"),
    "mistral": ("MistralConfig", "MistralForCausalLM", "sdpa"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", "eager"),  # transformers: SDPA cannot soft-cap
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", "sdpa"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", "sdpa"),
}

RANDOM_VOCAB_SIZE = 49152  # the bundled SmolLM2's, so embeddings and logits keep its size
RANDOM_SHAPES = {
    "llama-tiny": RandomShape(2, 128, 4, 2, 256, 8192, 10000.0),
    "smollm2-shape": RandomShape(30, 576, 9, 3, 1536, 8192, 100000.0),
    "llama-3.1-8b-shape": RandomShape(32, 4096, 32, 8, 14336, 131072, 500000.0),
    # one tiny model per family, each with the features of the family that reach attention
    "qwen2-tiny": RandomShape(2, 128, 4, 2, 256, 8192, 10000.0, "qwen2",  # Q/K/V biases; window on layer 1
                              (("use_sliding_window", True), ("sliding_window", 128), ("max_window_layers", 1))),
    "qwen3-tiny": RandomShape(2, 128, 4, 2, 256, 8192, 10000.0, "qwen3", (("head_dim", 32),)),  # q/k norms
    "mistral-tiny": RandomShape(2, 128, 4, 2, 256, 8192, 10000.0, "mistral", (("sliding_window", 4096),)),
    "gemma2-tiny": RandomShape(2, 128, 4, 2, 256, 8192, 10000.0, "gemma2",  # soft-cap, window on layer 0
                               (("head_dim", 32), ("query_pre_attn_scalar", 64), ("sliding_window", 128),
                                ("attn_logit_softcapping", 50.0))),
    "gemma3-tiny": RandomShape(2, 128, 2, 1, 256, 8192, 10000.0, "gemma3",  # head dim 256, window on layer 0
                               (("head_dim", 256), ("query_pre_attn_scalar", 64), ("sliding_window", 128),
                                ("sliding_window_pattern", 2))),
    "phi3-tiny": RandomShape(2, 192, 2, 2, 256, 8192, 10000.0, "phi3", (("pad_token_id", 0),)),  # head dim 96
}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    fingerprint: ModelFingerprint
    realistic: bool  # False for random-init models: their attention carries no real structure
    source: str  # where the weights came from, for the user


def cache_root() -> Path:
    """Per-user cache (override with SHAREDATTN_CACHE)."""
    env = os.environ.get("SHAREDATTN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sharedattn"


def fingerprint_of(config, model_id: str) -> ModelFingerprint:
    heads = config.num_attention_heads
    return ModelFingerprint(
        model_id=model_id,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        max_positions=getattr(config, "max_position_embeddings", 0) or 0,
    )


def layer_windows_of(config) -> tuple[int | None, ...] | None:
    """Each layer's sliding window from a transformers config (None: a global layer), or None when
    every layer is global. ``layer_types`` (Gemma2/3, Qwen2/3, ...) names each layer's kind; without
    it a ``sliding_window`` applies to every layer (Mistral) unless ``use_sliding_window`` is false."""
    window = getattr(config, "sliding_window", None)
    num_layers = config.num_hidden_layers
    types = getattr(config, "layer_types", None)
    if types is not None:
        windows = tuple(window if t == "sliding_attention" and window else None for t in types)
    elif window and getattr(config, "use_sliding_window", True) is not False:
        windows = (int(window),) * num_layers
    else:
        windows = (None,) * num_layers
    return windows if any(w is not None for w in windows) else None


def bundled_model_dir() -> Path:
    """The converted bundled model, converting it on first use."""
    return model_dir(NAMED_MODELS[BUNDLED_MODEL], cache_root())


def bundled_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_dir())


@dataclass(frozen=True)
class Placement:
    """Where a model's weights go: one ``device``, or sharded by a ``device_map`` (a ``DeviceMap``
    value: its layers spread over the GPUs, then the CPU) within ``max_memory`` (device -> size,
    e.g. ``{0: "70GiB", 1: "70GiB"}``)."""

    device: torch.device
    device_map: str | None = None
    max_memory: dict | None = None


def _load_pretrained(path: str, model_id: str, dtype, place: Placement, local_only: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    sharded = {"device_map": place.device_map, "max_memory": place.max_memory} if place.device_map else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation="sdpa", local_files_only=local_only, **sharded
    )
    if not place.device_map:
        model.to(place.device)
    model.eval()
    return LoadedModel(model, tokenizer, fingerprint_of(model.config, model_id), True, str(path))


def check_device_map(device_map: str | None, device: str | None = None) -> None:
    """A device map needs accelerate and excludes a fixed device (``ModelLoadError``, one line)."""
    if device_map is None:
        return
    if device_map not in {m.value for m in DeviceMap}:
        raise ModelLoadError(f"unknown device map {device_map!r} (choose from {', '.join(m.value for m in DeviceMap)})")
    if device is not None:
        raise ModelLoadError(f"give a device ({device}) or a device map ({device_map}), not both")
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise ModelLoadError("a device map needs the accelerate package: pip install accelerate")


def dispatch(model: torch.nn.Module, device_map: str, max_memory: dict | None = None) -> torch.nn.Module:
    """Shard a model that is in memory (on the CPU) as ``from_pretrained(device_map=...)`` would:
    accelerate's placement of whole decoder layers within ``max_memory``, then its dispatch."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory, get_max_memory

    no_split = getattr(model, "_no_split_modules", None) or []
    if device_map == "sequential":
        budget = get_max_memory(max_memory)
    else:
        budget = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=no_split,
                                     low_zero=device_map == "balanced_low_0")
    placement = infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split)
    if "disk" in placement.values():
        raise ModelLoadError("the model does not fit in --max-memory (GPUs and CPU): give more memory")
    model = dispatch_model(model, placement)
    model.hf_device_map = placement
    return model


def parse_random_shape(spec: str) -> tuple[str, RandomShape]:
    """``NAME`` or ``NAME:LAYERS`` (e.g. ``llama-3.1-8b-shape:2`` keeps two layers)."""
    name, _, layers = spec.partition(":")
    if name not in RANDOM_SHAPES:
        raise ModelLoadError(f"unknown random-init shape {name!r} (choose from {', '.join(RANDOM_SHAPES)})")
    shape = RANDOM_SHAPES[name]
    if layers:
        if not layers.isdigit() or int(layers) < 1:
            raise ModelLoadError(f"random-init shape {spec!r}: the layer count must be a positive integer")
        shape = replace(shape, num_layers=int(layers))
    return name, shape


def random_config(spec: str):
    """The transformers config of a random-init shape (no weights)."""
    import transformers

    _, shape = parse_random_shape(spec)
    config_name, _, implementation = RANDOM_FAMILIES[shape.family]
    return getattr(transformers, config_name)(
        vocab_size=RANDOM_VOCAB_SIZE,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_positions,
        rope_theta=shape.rope_theta,
        tie_word_embeddings=True,
        attn_implementation=implementation,
        **dict(shape.extra),
    )


def random_model(spec: str, dtype, device, seed: int = 0, place: Placement | None = None) -> LoadedModel:
    """A randomly initialised model of a named shape (its family: ``RANDOM_FAMILIES``), with a
    tokenizer built locally (no model package, no download: analysis/hf/local_tokenizer.py).

    With a device map (``place``) the weights are drawn on the CPU and then sharded, so they are
    not those the same seed draws on a GPU."""
    import transformers

    from .local_tokenizer import local_tokenizer

    name, shape = parse_random_shape(spec)
    tokenizer = local_tokenizer(RANDOM_VOCAB_SIZE)
    model_name = RANDOM_FAMILIES[shape.family][1]
    config = random_config(spec)
    torch.manual_seed(seed)
    sharded = place is not None and place.device_map
    with torch.device("cpu" if sharded else device):
        model = getattr(transformers, model_name)(config).to(dtype).eval()
    if sharded:
        model = dispatch(model, place.device_map, place.max_memory)
    fp = fingerprint_of(config, f"random:{name}")
    return LoadedModel(model, tokenizer, fp, False, f"random init ({spec}, seed {seed})")


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    canonical = DTYPE_ALIASES.get(name, name)
    if canonical not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return getattr(torch, canonical)


def looks_like_model(spec: str) -> bool:
    """Whether a positional argument names a model rather than a prompt."""
    if spec in NAMED_MODELS:
        return True
    path = Path(spec)
    if path.is_dir():
        return True
    if path.exists():
        return False
    parts = spec.split("/")  # a hub id: owner/name, and the name has no file suffix such as .txt
    suffix = Path(parts[-1]).suffix[1:]
    return len(parts) == 2 and all(parts) and not (suffix.isalpha() and len(suffix) <= 5)


def load_model(spec: str | None = None, *, random_init: str | None = None,
               dtype: str | None = None, device: str | None = None,
               device_map: DeviceMap | str | None = None, max_memory: dict | None = None) -> LoadedModel:
    """Load ``spec`` (default: the bundled SmolLM2) or a random-init shape, on ``device``, or
    sharded over the GPUs by ``device_map`` within ``max_memory`` (``Placement``; needs accelerate)."""
    device_map = getattr(device_map, "value", device_map)  # a DeviceMap or its name
    check_device_map(device_map, device)
    if max_memory and not device_map:
        raise ModelLoadError("a memory limit per device (--max-memory) needs a device map (--device-map auto)")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    place = Placement(dev, device_map, max_memory)
    torch_dtype = resolve_dtype(dtype, dev)
    if random_init:
        return random_model(random_init, torch_dtype, dev, place=place)
    spec = spec or BUNDLED_MODEL
    if spec in NAMED_MODELS:
        return _load_pretrained(str(model_dir(NAMED_MODELS[spec], cache_root())), spec, torch_dtype, place, True)
    path = Path(spec)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model {spec!r}: not a Hugging Face model folder (no config.json)")
        try:
            return _load_pretrained(str(path), path.resolve().name, torch_dtype, place, True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"model {spec!r}: cannot be loaded ({_first_line(exc)})") from None
    try:  # already in the local Hugging Face cache?
        return _load_pretrained(spec, spec, torch_dtype, place, True)
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise ModelLoadError(f"model {spec!r}: not a local folder, not in the Hugging Face cache, "
                             "and the hub cannot be reached from this machine")
    try:
        return _load_pretrained(spec, spec, torch_dtype, place, False)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"model {spec!r}: not a local folder, and the Hugging Face hub could not provide it "
            f"({_first_line(exc)})"
        ) from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt, so an offline machine fails at once instead of retrying."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
