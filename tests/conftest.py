"""Shared test set-up.

TRITON_INTERPRET must be set before any module that defines @triton.jit kernels is imported,
so it is set here, at the top of the root conftest, whenever no CUDA device is present.

The suite's cache (converted bundled model, captured records, built lookups) lives in a temporary
folder made for this session, so runs never read or fill the user's ~/.cache/sharedattn and do not
depend on earlier runs; SHAREDATTN_CACHE is set here, before anything reads it. The bundled model
is then converted once per session (about 30 s), by the first test that needs it.
"""
import atexit
import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="sharedattn-test-cache-")
os.environ["SHAREDATTN_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

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
    """The bundled SmolLM2-135M (fp32, CPU), converted once per session into the temporary cache."""
    from sharedattn.analysis.hf.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tiny_model():
    """A 2-layer random-init Llama (4 query heads, 2 KV heads) with its locally built tokenizer
    (analysis/hf/local_tokenizer.py; no bundled model needed)."""
    from sharedattn.analysis.hf.models import load_model

    return load_model(random_init="llama-tiny", device="cpu")
