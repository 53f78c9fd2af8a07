"""Saturation-scan speed: tf_esm vs fair-esm's predict.py approach vs transformers, and a long protein in windows.

1. A masked-marginal saturation scan (19 x L scores, one masked copy per position) of one random protein of
   `--length` residues (default 300) at an ESM-2 shape (default t33 = esm2_t33_650M, random weights):
   * tf_esm: `tf_esm.pipelines.scoring.saturation_scan` (one compiled forward pass over batches of masked copies);
   * fair-esm: `esm.ESM2` as `examples/variant-prediction/predict.py` scores masked marginals (mask position i,
     log-softmax, read row i), but with the masked copies batched as a careful user would (`--max-tokens-per-batch`
     tokens a batch) under `torch.inference_mode()`; fair-esm's own random initialisation (timing only);
   * transformers: `EsmForMaskedLM` on the same weights as tf_esm, batched the same way, `torch.inference_mode()`.
   Each runs in its own process; the time is the whole process's wall time from its start (imports, model load,
   compilation and the scan), and its memory as shared/tools/memwatch.py measures it (peak anonymous memory, the
   machine's unreclaimable-memory rise, VmHWM). tf_esm's scores are compared with transformers'.
   Target: tf_esm at least 2x faster than the better of the other two.
2. One protein of `--long-length` residues (default 2,500) embedded with `tf_esm.pipelines.inference.embed_sequences`
   in overlapping windows (the default `long="window"`): whole-process time and memory.

    python benchmarks/bench_scan.py                           # the real run (t33, L=300, L=2500): minutes
    python benchmarks/bench_scan.py --shape tiny --length 30 --long-length 2500   # smoke test

Prints a Markdown table; numbers go to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SHAPES = {  # name: (layers, hidden, heads, ffn)
    "tiny": (2, 64, 4, 128),
    "t6": (6, 320, 20, 1280),
    "t12": (12, 480, 20, 1920),
    "t30": (30, 640, 20, 2560),
    "t33": (33, 1280, 20, 5120),
}
RESIDUES = "LAGVSERTIDPKQNFYMHWC"
ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", *RESIDUES, "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>"]
WORKERS = ("tf_esm", "fair_esm", "transformers", "tf_esm_windows")


def protein(length, seed):
    return "".join(np.random.default_rng(seed).choice(list(RESIDUES), size=length))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_checkpoint(shape, directory):
    import torch
    import transformers

    layers, hidden, heads, ffn = SHAPES[shape]
    config = transformers.EsmConfig(
        vocab_size=33, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, pad_token_id=1, mask_token_id=32, layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    transformers.EsmForMaskedLM(config).eval().save_pretrained(directory)
    with open(os.path.join(directory, "vocab.txt"), "w") as handle:  # ESM-2's vocabulary, for EsmTokenizer
        handle.write("\n".join(ESM_VOCAB) + "\n")


def masked_batches(tokens, max_tokens_per_batch, mask_id):
    """(positions, rows) batches of masked copies of `tokens` (1, T), one copy per residue."""
    import torch

    length = tokens.shape[1]
    per_batch = max(1, max_tokens_per_batch // length)
    positions = list(range(1, length - 1))
    for start in range(0, len(positions), per_batch):
        chunk = positions[start:start + per_batch]
        rows = tokens.repeat(len(chunk), 1)
        rows[torch.arange(len(chunk)), torch.as_tensor(chunk)] = mask_id
        yield chunk, rows


def torch_scan(forward, tokens, max_tokens_per_batch, mask_id, letters_to_ids):
    """(L, 20) scores from a torch masked LM, as predict.py reads them (log-softmax at the masked row)."""
    import torch

    wild_type = tokens[0, 1:-1]
    columns = torch.as_tensor([letters_to_ids[letter] for letter in RESIDUES])
    scores = torch.empty(tokens.shape[1] - 2, len(RESIDUES), dtype=torch.float64)
    with torch.inference_mode():
        for chunk, rows in masked_batches(tokens, max_tokens_per_batch, mask_id):
            log_probs = torch.log_softmax(forward(rows).double(), dim=-1)
            index = torch.as_tensor(chunk)
            picked = log_probs[torch.arange(len(chunk)), index]
            scores[index - 1] = picked[:, columns] - picked.gather(1, wild_type[index - 1][:, None])
    return scores.numpy()


def worker(args):
    start = time.perf_counter()
    sequence = protein(args.length, seed=1)
    result = {}
    if args.worker in ("tf_esm", "tf_esm_windows"):
        from tf_esm import TFEsmForMaskedLM

        model = TFEsmForMaskedLM.from_pretrained(args.checkpoint)
        if args.worker == "tf_esm":
            from tf_esm.pipelines.scoring import saturation_scan

            scores = saturation_scan(model, sequence, "masked-marginals",
                                     max_tokens_per_batch=args.max_tokens_per_batch)
            result["scores"] = scores.tolist()  # columns in alphabetical order (STANDARD_AMINO_ACIDS)
        else:
            from tf_esm.pipelines.inference import embed_sequences

            long_sequence = protein(args.long_length, seed=2)
            output, = embed_sequences(model, [long_sequence], include=("mean", "per_tok"),
                                      max_tokens_per_batch=args.max_tokens_per_batch)
            result["windows"] = int(output["windows"])
    elif args.worker == "transformers":
        import torch
        import transformers

        torch.set_grad_enabled(False)
        model = transformers.EsmForMaskedLM.from_pretrained(args.checkpoint).eval()
        tokenizer = transformers.EsmTokenizer.from_pretrained(args.checkpoint)
        tokens = torch.as_tensor([tokenizer.encode(sequence)])
        scores = torch_scan(lambda rows: model(rows).logits, tokens, args.max_tokens_per_batch,
                            tokenizer.mask_token_id, tokenizer.get_vocab())
        result["scores"] = scores[:, [RESIDUES.index(a) for a in sorted(RESIDUES)]].tolist()
    else:  # fair_esm: esm.ESM2 at the same shape, its own random weights
        import esm
        import torch

        layers, hidden, heads, _ = SHAPES[args.shape]
        alphabet = esm.Alphabet.from_architecture("ESM-1b")
        model = esm.model.esm2.ESM2(num_layers=layers, embed_dim=hidden, attention_heads=heads, alphabet=alphabet,
                                    token_dropout=True).eval()
        _, _, tokens = alphabet.get_batch_converter()([("protein", sequence)])
        torch_scan(lambda rows: model(rows)["logits"], tokens, args.max_tokens_per_batch, alphabet.mask_idx,
                   alphabet.tok_to_idx)
    result["inner_s"] = time.perf_counter() - start
    result["peak_rss_mb"] = peak_rss_mb()
    with open(args.result_out, "w") as handle:
        json.dump(result, handle)


def spawn(kind, **options):
    """Run this script as `--worker kind` in a fresh process: its wall time from start, and the JSON it wrote."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    command = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--result-out", out]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    # Under shared/tools/memwatch.py: peak anonymous memory and the machine's unreclaimable-memory rise too.
    from bench_cli import run_process

    wall, memory, _ = run_process(command, env)
    try:
        with open(out) as handle:
            result = json.load(handle)
    finally:
        os.unlink(out)
    result["wall_s"] = wall
    result["memory"] = memory
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="t33")
    parser.add_argument("--length", type=int, default=300, help="residues of the scanned protein")
    parser.add_argument("--long-length", type=int, default=2500, help="residues of the protein embedded in windows")
    parser.add_argument("--max-tokens-per-batch", type=int, default=4096)
    parser.add_argument("--workers", nargs="+", choices=WORKERS, default=list(WORKERS))
    parser.add_argument("--worker", choices=WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--result-out", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from bench_cli import cpu_name
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = os.path.join(directory, "checkpoint")
        build_checkpoint(args.shape, checkpoint)
        results = {}
        for kind in args.workers:
            results[kind] = spawn(kind, shape=args.shape, length=args.length, long_length=args.long_length,
                                  max_tokens_per_batch=args.max_tokens_per_batch, checkpoint=checkpoint)
    print(f"\nSaturation scan, masked marginals: {args.shape}, L={args.length} ({19 * args.length} mutants, "
          f"{args.length} forward passes), --max-tokens-per-batch {args.max_tokens_per_batch}; CPU: {cpu_name()}\n")
    print("| run | whole process (s) | anon peak GiB | unreclaimable rise GiB | VmHWM GiB | tf_esm speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    tf_time = results.get("tf_esm", {}).get("wall_s")
    for kind in ("tf_esm", "fair_esm", "transformers"):
        if kind in results:
            run = results[kind]
            ratio = f"{run['wall_s'] / tf_time:.2f}x" if tf_time and kind != "tf_esm" else ""
            memory = run["memory"]
            print(f"| {kind} | {run['wall_s']:.1f} | {memory['anon_peak_gib']:.2f} | {memory['used_rise_gib']:.2f} | "
                  f"{memory['vmhwm_gib']:.2f} | {ratio} |")
    if "tf_esm" in results and "transformers" in results:
        difference = np.abs(np.asarray(results["tf_esm"]["scores"]) - np.asarray(results["transformers"]["scores"]))
        print(f"\nmax |tf_esm - transformers| over the scan's scores: {difference.max():.2e}")
    if "tf_esm_windows" in results:
        run = results["tf_esm_windows"]
        print(f"\nEmbedding one {args.long_length}-residue protein in {run['windows']} windows ({args.shape}, mean + "
              f"per-residue): whole process {run['wall_s']:.1f} s, anon peak {run['memory']['anon_peak_gib']:.2f} GiB, "
              f"unreclaimable rise {run['memory']['used_rise_gib']:.2f} GiB, VmHWM {run['memory']['vmhwm_gib']:.2f} GiB")


if __name__ == "__main__":
    sys.exit(main())
