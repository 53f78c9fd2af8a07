"""Where an ESMFold first call spends its time: the stem, the trunk's blocks and the structure module, per fold.

One process loads a converted checkpoint (`tf-esm convert`, e.g. the full model that `bench_fold.py --size full`
builds) and folds one random sequence per length given. Before each fold the model forgets which length buckets it
has seen, so every fold takes the eager first-call path (`compiled="auto"`): fold 1 pays what only the first call
of a process pays, the later ones what a first call at a new length pays. Wall time per part, by wrapping
`compute_language_model_representations`, `LayerStack.apply` (the trunk's blocks, all passes) and
`StructureModule.__call__` (a wait for its program, prepared in the background, counts here).

    python benchmarks/fold_parts.py /work/bench_cache/esmfold_full_tf_esm --lengths 64 64 72 --num-recycles 0
    python benchmarks/fold_parts.py /work/bench_cache/esmfold_full_tf_esm --lengths 64 64 72   # default recycles
    python benchmarks/fold_parts.py CHECKPOINT --eager-structure-module    # without the background preparation

Empty the page cache and read the checkpoint once before (as `bench_fold.py` does) for a first fold that is
comparable between runs: `sync; echo 3 > /proc/sys/vm/drop_caches; cat CHECKPOINT/* > /dev/null`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 64, 72])
    parser.add_argument("--num-recycles", type=lambda text: None if text.lower() == "none" else int(text),
                        default=None, help="passes after the first; default: the model's (3 extra)")
    parser.add_argument("--eager-structure-module", action="store_true",
                        help="run the structure module eagerly (no program prepared in the background)")
    args = parser.parse_args()

    start = time.perf_counter()
    import numpy as np

    from tf_esm import TFEsmForProteinFolding
    from tf_esm.folding import compiled_tf
    from tf_esm.folding.structure_module import StructureModule
    from tf_esm.modeling.layer_stack import LayerStack

    if args.eager_structure_module:
        compiled_tf.structure_module_ahead = lambda *a, **k: contextlib.nullcontext()
    model = TFEsmForProteinFolding.from_pretrained(args.checkpoint)
    print(f"load (imports included) {time.perf_counter() - start:.2f} s", flush=True)
    parts = collections.defaultdict(float)

    def timed(owner, name, label):
        original = getattr(owner, name)

        def run(*a, **k):
            began = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                parts[label] += time.perf_counter() - began

        setattr(owner, name, run)

    timed(model, "compute_language_model_representations", "stem")
    timed(LayerStack, "apply", "trunk")
    timed(StructureModule, "__call__", "structure module")
    rng = np.random.default_rng(0)
    residues = list("ACDEFGHIKLMNPQRSTVWY")
    print("| fold | L | total (s) | stem (s) | trunk (s) | structure module (s) |")
    print("|---|---|---|---|---|---|")
    for index, length in enumerate(args.lengths, 1):
        parts.clear()
        model._first_calls_done.clear()  # every fold takes the first-call path
        sequence = "".join(rng.choice(residues, length))
        began = time.perf_counter()
        model.infer(sequence, num_recycles=args.num_recycles)
        total = time.perf_counter() - began
        print(f"| {index} | {length} | {total:.2f} | {parts['stem']:.2f} | {parts['trunk']:.2f} | "
              f"{parts['structure module']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
