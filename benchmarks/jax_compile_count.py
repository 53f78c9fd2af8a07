#!/usr/bin/env python
"""How many programs `embed_sequences` compiles under JAX for a realistic length mix, and how many a second call
with new sequences adds. A tiny random model: the count depends on the lengths and the batch budget, not the size.

    KERAS_BACKEND=jax python benchmarks/jax_compile_count.py [NUM_SEQUENCES]
"""
import sys
import time

import numpy as np
from tf_esm import TFEsmModel
from tf_esm.configuration import EsmConfig
from tf_esm.pipelines.inference import embed_sequences, traced_shapes, bucket_length
cfg = EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=1026, pad_token_id=1, mask_token_id=32, position_embedding_type="rotary",
                token_dropout=True)
model = TFEsmModel(cfg, add_pooling_layer=False)
rng = np.random.default_rng(0)
letters = list("LAGVSERTIDPKQNFYMHWC")
n = int(sys.argv[1]) if len(sys.argv) > 1 else 256
lengths = np.clip(rng.lognormal(np.log(300), 0.6, size=n).astype(int), 20, 1022)
seqs = ["".join(rng.choice(letters, size=l)) for l in lengths]
batches = []
t = time.time()
embed_sequences(model, seqs, include=("mean",), progress_callback=lambda *d: batches.append(d))
t1 = time.time() - t
shapes = traced_shapes(model)
print(f"backend run 1: {n} seqs, {len(batches)} batches, {len(shapes)} traces, buckets used {len({bucket_length(l+2) for l in lengths})}, {t1:.1f}s")
rng2 = np.random.default_rng(1)
lengths2 = np.clip(rng2.lognormal(np.log(300), 0.6, size=n).astype(int), 20, 1022)
batches.clear(); t = time.time()
embed_sequences(model, ["".join(rng2.choice(letters, size=l)) for l in lengths2], include=("mean",), progress_callback=lambda *d: batches.append(d))
print(f"run 2 (new {n} seqs, same distribution): {len(batches)} batches, {len(traced_shapes(model)) - len(shapes)} new traces, {time.time()-t:.1f}s")
print(sorted(set(shapes), key=lambda s: (s[1] or 0, s[0] or 0)))
