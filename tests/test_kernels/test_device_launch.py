"""Every Triton launch runs on its inputs' GPU (kernels/device.py), checked in the source on the CPU.

A model sharded over several GPUs calls the kernels with tensors on a GPU that is not the current
one, and Triton launches on the current device. So each function that launches a ``@triton.jit``
kernel is decorated with ``on_input_device``, or every caller of it in ``kernels/`` is; a launcher
added without it fails here. (tests/test_gpu/test_sharded_gpu.py runs them on a second GPU.)
"""
import ast
from pathlib import Path

import torch

from sharedattn.kernels.device import on_device, on_input_device

KERNELS = Path(__file__).resolve().parents[2] / "kernels"


def _decorator_names(fn: ast.FunctionDef) -> set[str]:
    names = set()
    for dec in fn.decorator_list:
        node = dec.func if isinstance(dec, ast.Call) else dec
        names.add(node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", ""))
    return names


def _functions() -> dict[str, ast.FunctionDef]:
    out = {}
    for path in sorted(KERNELS.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                out[f"{path.stem}.{node.name}"] = node
    return out


def _launches(fn: ast.FunctionDef, jit: set[str]) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Subscript)
               and isinstance(n.func.value, ast.Name) and n.func.value.id in jit for n in ast.walk(fn))


def _calls(fn: ast.FunctionDef, name: str) -> bool:
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == name for n in ast.walk(fn))


def test_every_launcher_runs_on_its_inputs_device():
    functions = _functions()
    jit = {fn.name for fn in functions.values() if "jit" in _decorator_names(fn)}
    launchers = [q for q, fn in functions.items() if _launches(fn, jit)]
    assert len(launchers) >= 6  # attention, mass pass, pooling, pooled softmax, probe profiles, assemble
    bare = []
    for qualified in launchers:
        fn = functions[qualified]
        if "on_input_device" in _decorator_names(fn):
            continue
        callers = [c for c, other in functions.items() if c != qualified and _calls(other, fn.name)]
        if not callers or any("on_input_device" not in _decorator_names(functions[c]) for c in callers):
            bare.append(qualified)
    assert bare == [], f"Triton launchers not run under their inputs' GPU (decorate with on_input_device): {bare}"


def test_on_cpu_tensors_nothing_changes():
    x = torch.ones(2)
    with on_device(x), on_device(torch.device("cpu")):
        pass
    twice = on_input_device(lambda t, k=1: t * 2 * k)
    assert torch.equal(twice(x, k=2), x * 4)
