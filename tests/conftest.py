"""Shared test set-up.

TRITON_INTERPRET must be set before any module that defines @triton.jit kernels is imported,
so it is set here, at the top of the root conftest, whenever no CUDA device is present.
"""
import os

if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "test_gpu" in item.nodeid.split("/"):
            item.add_marker(pytest.mark.gpu)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M (fp32, CPU), converted once per machine into the user cache."""
    from sharedattn.analysis.hf.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tiny_model():
    """A 2-layer random-init Llama (4 query heads, 2 KV heads) with the bundled tokenizer."""
    from sharedattn.analysis.hf.models import load_model

    return load_model(random_init="llama-tiny", device="cpu")
