#!/usr/bin/env python
"""Compile time of the embedding program under JAX: one `embed_sequences` batch shape of a random ESM-2 of a given
shape, traced, lowered and compiled ahead of time (`jax.jit(...).lower(...).compile()`), CPU seconds and wall
seconds of each step, then one run of the compiled program.

    KERAS_BACKEND=jax python benchmarks/jax_encoder_compile.py --shape t12 --rows 4 --length 256
    KERAS_BACKEND=jax python benchmarks/jax_encoder_compile.py --shape t30 --layers-out all
    KERAS_BACKEND=jax python benchmarks/jax_encoder_compile.py --shape t30 --unrolled   # the layer loop unrolled
    KERAS_BACKEND=jax python benchmarks/jax_encoder_compile.py --shape t33 --compile-only   # esm2 650M's shape

`--unrolled` turns the encoder's `lax.scan` off (`tf_esm.modeling.encoder_jax.SCAN_STACKS = False`), which is how
every program was compiled before the scan.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_embed import SHAPES as EMBED_SHAPES  # noqa: E402

SHAPES = dict(EMBED_SHAPES, t33=(33, 1280, 20, 5120))  # t33: esm2_t33_650M's shape


def clocks():
    return time.process_time(), time.perf_counter()


def since(start):
    cpu, wall = clocks()
    return round(cpu - start[0], 3), round(wall - start[1], 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="t12", choices=list(SHAPES))
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--layers-out", choices=("last", "all"), default="last",
                        help="repr_layers: the last layer (the default of embed) or every layer")
    parser.add_argument("--unrolled", action="store_true", help="compile with the layer loop unrolled")
    parser.add_argument("--compile-only", action="store_true", help="skip running the compiled program")
    args = parser.parse_args()

    import jax
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit("run with KERAS_BACKEND=jax")
    from tf_esm import TFEsmModel
    from tf_esm.configuration import EsmConfig
    from tf_esm.modeling import encoder_jax
    from tf_esm.pipelines import inference

    encoder_jax.SCAN_STACKS = not args.unrolled
    layers, hidden, heads, ffn = SHAPES[args.shape]
    config = EsmConfig(vocab_size=33, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=ffn, max_position_embeddings=1026, pad_token_id=1, mask_token_id=32,
                       position_embedding_type="rotary", token_dropout=True)
    model = TFEsmModel(config, add_pooling_layer=False)
    model.build()
    runner = inference._runner(model)
    repr_layers = tuple(range(layers + 1)) if args.layers_out == "all" else (layers,)
    function = runner.function(repr_layers, ("mean",), True)
    input_ids = np.full((args.rows, args.length), 5, dtype=np.int32)
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    lengths = np.full(args.rows, args.length - 2, dtype=np.int32)
    arguments = function.arguments(input_ids, lengths)
    start = clocks()
    lowered = function.jitted.lower(*arguments)
    trace = since(start)
    start = clocks()
    compiled = lowered.compile()
    compile_ = since(start)
    first = warm = None
    if not args.compile_only:
        start = clocks()
        jax.block_until_ready(compiled(*arguments))
        first = since(start)
        start = clocks()
        jax.block_until_ready(compiled(*arguments))
        warm = since(start)
    print(json.dumps(dict(shape=args.shape, rows=args.rows, length=args.length, layers_out=args.layers_out,
                          scan=not args.unrolled, jax=jax.__version__, device=jax.default_backend(),
                          trace_lower_cpu_wall_s=trace, compile_cpu_wall_s=compile_, first_run_cpu_wall_s=first,
                          warm_run_cpu_wall_s=warm)))


if __name__ == "__main__":
    main()
