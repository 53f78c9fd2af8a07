"""Attention alone, one thread (as each of `iter_embeddings`' CPU streams runs it): tf_esm's blocked attention vs
`keras.ops.dot_product_attention` (what it replaces) vs PyTorch's `scaled_dot_product_attention`, in one process.

ESM-2 heads (20 x 16 at esm2_t6_8M; 20 x 32 at t12, 20 x 64 at t33), batches of about 512 tokens, fp32, CPU:

    python benchmarks/bench_attention.py
    python benchmarks/bench_attention.py --head-dim 32 --lengths 256 1024
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_embed import best_time  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--heads", type=int, default=20)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512, help="rows x length per call (at least one row)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    import torch

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    torch.set_num_threads(1)
    import keras

    from tf_esm.modeling import attention_tf

    signature = [tf.TensorSpec((None, args.heads, None, args.head_dim), tf.float32)] * 3
    blocked = tf.function(attention_tf.blocked_attention, input_signature=signature)
    fused = tf.function(lambda q, k, v: keras.ops.dot_product_attention(
        *(tf.transpose(x, (0, 2, 1, 3)) for x in (q, k, v)), scale=1.0), input_signature=signature)

    print(f"heads {args.heads} x {args.head_dim}, about {args.tokens} tokens per call, fp32, 1 thread; ms per call")
    print("| length | rows | scores MB (whole) | keras.ops.dot_product_attention | tf_esm blocked | torch sdpa "
          "| blocked vs keras | blocked vs torch | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for length in args.lengths:
        rows = max(1, args.tokens // length)
        q, k, v = (rng.standard_normal((rows, args.heads, length, args.head_dim)).astype(np.float32)
                   for _ in range(3))
        tq, tk, tv = (tf.constant(x) for x in (q, k, v))
        pq, pk, pv = (torch.from_numpy(x) for x in (q, k, v))
        keras_s = best_time(lambda: fused(tq, tk, tv).numpy(), args.repeats, warmup=1)
        blocked_s = best_time(lambda: blocked(tq, tk, tv).numpy(), args.repeats, warmup=1)
        with torch.inference_mode():
            torch_s = best_time(lambda: torch.nn.functional.scaled_dot_product_attention(pq, pk, pv, scale=1.0),
                                args.repeats, warmup=1)
            expected = torch.nn.functional.scaled_dot_product_attention(pq, pk, pv, scale=1.0).numpy()
        diff = np.abs(np.transpose(blocked(tq, tk, tv).numpy(), (0, 2, 1, 3)) - expected).max()
        scores_mb = rows * args.heads * length * length * 4 / 2 ** 20
        print(f"| {length} | {rows} | {scores_mb:.0f} | {keras_s * 1e3:.2f} | {blocked_s * 1e3:.2f} | "
              f"{torch_s * 1e3:.2f} | {keras_s / blocked_s:.2f}x | {torch_s / blocked_s:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
