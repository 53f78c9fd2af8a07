"""ESMFold's first compiled call under TensorFlow at the real depth: stacks traced once vs unrolled.

The first call at a new length bucket traces the forward pass and has TensorFlow's runtime optimise and instantiate
it; both grow with the number of layers, not their width. This builds an ESMFold with the full model's depth (36
stem layers, 48 trunk blocks, 8 structure-module blocks) and tiny widths, random weights, and times in one fresh
process per mode: the first call (trace + optimise + run), the second call and the warm call, at one length.

Modes: `noinline` (default of tf_esm: the stacks traced once, one not-inlined call per layer), `inline` (traced
once, calls inlined by the runtime), `unrolled` (one trace per layer, as before `layers_tf`).

    python benchmarks/fold_first_call.py                        # L=64, every mode
    python benchmarks/fold_first_call.py --length 128 --modes noinline unrolled
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r'''
import json, os, sys, time
import numpy as np
from tf_esm.startup import import_tensorflow_quietly
import_tensorflow_quietly()
import keras
from tf_esm import TFEsmForProteinFolding
from tf_esm.configuration import ESM2_VOCAB, EsmConfig
from tf_esm.modeling import layers_tf

mode, length = sys.argv[1], int(sys.argv[2])
layers_tf.TRACE_ONCE = mode != "unrolled"
layers_tf.NOINLINE = mode == "noinline"
structure = dict(sequence_dim=32, pairwise_dim=16, ipa_dim=8, resnet_dim=16, num_heads_ipa=2, num_qk_points=2,
                 num_v_points=2, num_blocks=8)
trunk = dict(num_blocks=48, sequence_state_dim=32, pairwise_state_dim=16, sequence_head_width=8,
             pairwise_head_width=8, structure_module=structure)
config = EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=36, num_attention_heads=4, intermediate_size=64,
                   max_position_embeddings=1026, pad_token_id=1, mask_token_id=32, position_embedding_type="rotary",
                   token_dropout=True, emb_layer_norm_before=False, is_folding_model=True,
                   vocab_list=list(ESM2_VOCAB),
                   esmfold_config=dict(fp16_esm=False, lddt_head_hid_dim=16, trunk=trunk))
keras.utils.set_random_seed(0)
model = TFEsmForProteinFolding(config)
model.build()
aatype = np.random.default_rng(0).integers(0, 20, (1, length)).astype(np.int32)
times = []
for _ in range(4):
    start = time.perf_counter()
    out = model(aatype, num_recycles=0)
    np.asarray(out["positions"])
    times.append(time.perf_counter() - start)
print("RESULT " + json.dumps(dict(first=times[0], second=times[1], warm=min(times[2:]),
                                  positions=np.asarray(out["positions"]).ravel()[:200].tolist())))
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--modes", nargs="+", default=["noinline", "inline", "unrolled"],
                        choices=["noinline", "inline", "unrolled"])
    args = parser.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    rows, first_positions = [], None
    for mode in args.modes:
        done = subprocess.run([sys.executable, "-c", CHILD, mode, str(args.length)], env=env, capture_output=True,
                              text=True, check=True)
        result = json.loads(done.stdout.split("RESULT ", 1)[1])
        first_positions = first_positions or result["positions"]
        same = max(abs(a - b) for a, b in zip(result["positions"], first_positions))
        rows.append(f"| {mode} | {result['first']:.1f} | {result['second']:.2f} | {result['warm']:.2f} | "
                    f"{same:.1e} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"\nESMFold depth (36 stem layers, 48 trunk blocks), tiny widths, L={args.length}, batch 1, no recycling. "
          f"Command: `python benchmarks/fold_first_call.py {' '.join(sys.argv[1:])}`\n")
    print("| mode | first call s | second s | warm s | max abs diff of positions vs first mode (A) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
