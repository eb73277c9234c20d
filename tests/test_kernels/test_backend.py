import subprocess
import sys

import torch

from sharedattn import kernels
from sharedattn.kernels import reference as ref
from sharedattn.kernels.backend import Backend, select_backend, use_backend

from ._helpers import make_qkv, random_layout


def test_override_and_default():
    x = torch.zeros(1)
    assert select_backend(x) is Backend.REFERENCE  # CPU tensors: the torch twin unless asked
    with use_backend("triton"):
        assert select_backend(x) is Backend.TRITON
        with use_backend("reference"):
            assert select_backend(x) is Backend.REFERENCE
    assert select_backend(x) is Backend.REFERENCE


def test_backends_agree():
    q, k, v = make_qkv(2, 4, 2, 130, 200, 32, torch.float32, seed=5)
    lay = random_layout(2, 4, 130, 200, 64, 0.5)
    pivotal = torch.tensor([[False, True, False, True], [True, False, False, False]])
    results = {}
    for b in (Backend.TRITON, Backend.REFERENCE):
        with use_backend(b):
            results[b] = (
                kernels.sparse_attention(q, k, v, lay, return_block_mass=True),
                kernels.sparse_attention(q, k, v, lay, return_block_mass=True, mass_heads=pivotal),
                kernels.block_mass(q, k, 64),
                kernels.last_block_profiles(q, k, 64),
                kernels.pooled_block_estimate(q, k, 64),
                kernels.pooled_estimate_of_means(kernels.pool_blocks_mean(q, 64), k, 130, 64),
                kernels.probe_column_estimate(q, k, 64),
                kernels.pool_blocks_mean(q, 64),
            )
    flat = [torch.utils._pytree.tree_leaves(results[b]) for b in results]
    for a, b in zip(*flat):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(results[Backend.TRITON][2], ref.block_mass_ref(q, k, 64), atol=1e-5)
    full, part = results[Backend.REFERENCE][0][1], results[Backend.REFERENCE][1][1]
    assert torch.equal(part[~pivotal], torch.zeros_like(part[~pivotal]))
    assert torch.allclose(part[pivotal], full[pivotal], atol=1e-6)


def test_import_is_cheap():
    code = "import sys, sharedattn.kernels; print('triton' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
