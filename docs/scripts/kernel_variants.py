"""Time block_sparse_attention's launch variants side by side (GPU; H200 numbers in
docs/benchmarks.md, "Versions"). Llama-3.1-8B shapes, bf16, block 128; for each length: cuDNN
dense, then every config of ``kernels.bench.DEFAULT_CONFIGS`` on density 1.0 and on density 0.1
random and vertical-slash masks. Prints one line per timing and a JSON summary last.

    python docs/scripts/kernel_variants.py [--lengths 32768,131072]
"""
import argparse
import json

import torch

from sharedattn.kernels import bench as kb
from sharedattn.kernels.block_sparse import AttnConfig, block_sparse_attention
from sharedattn.kernels.layout import BlockLayout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="32768,131072")
    args = ap.parse_args()
    dev = torch.device("cuda")
    shape = kb.BenchShape()
    print(f"gpu: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        q, k, v = kb.make_inputs(shape, n, dev)
        cudnn = kb.Baselines(q, k, v).sdpa_ms("cudnn")
        gen = torch.Generator(device=dev).manual_seed(n)
        masks = {"dense": kb.random_mask(shape, n, 1.0, gen, dev),
                 "random_0.1": kb.random_mask(shape, n, 0.1, gen, dev),
                 "vs_0.1": kb.vertical_slash_mask(shape, n, 0.1, gen, dev)}
        lays = {name: BlockLayout.from_dense(m, shape.block_size) for name, m in masks.items()}
        print(f"n={n}: cudnn {cudnn:.2f} ms")
        out = torch.empty_like(q)
        for c in kb.DEFAULT_CONFIGS:
            cfg = AttnConfig(*c)
            res = {"n": n, "config": list(c), "cudnn_ms": cudnn}
            try:
                for name, lay in lays.items():
                    ms = kb.time_ms(lambda: block_sparse_attention(q, k, v, lay, out=out, config=cfg))  # noqa: F821 - ruff misreads the later del
                    res[name] = ms
                    res[f"{name}_x_cudnn"] = lay.density() * cudnn / ms
            except Exception as exc:  # a variant the compiler rejects is reported and skipped
                print(f"  {c}: failed: {type(exc).__name__}: {str(exc)[:160]}")
                continue
            rows.append(res)
            print(f"  {c}: " + ", ".join(f"{k} {res[k]:.2f} ms ({res[k + '_x_cudnn']:.2f}x)"
                                          for k in lays))
        del q, k, v, out, lays, masks
        torch.cuda.empty_cache()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
