"""`TFEsmForProteinFolding`: ESMFold (an ESM-2 stem, the folding trunk, the structure module and the
confidence heads) as a Keras model that loads HF `EsmForProteinFolding` checkpoints."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from tf_esm._deprecation import renamed_keywords
from tf_esm.folding import residue_constants as rc
from tf_esm.folding.atoms import make_atom14_masks
from tf_esm.folding.heads import (
    DISTOGRAM_BINS,
    LddtHead,
    categorical_lddt,
    compute_predicted_aligned_error,
    compute_tm,
)
from tf_esm.folding.inference import CompiledInference, crop_outputs
from tf_esm.folding.pdb import output_to_pdb
from tf_esm.folding.primitives import LayerNorm
from tf_esm.folding.structure_module import BLOCK_OUTPUTS
from tf_esm.folding.trunk import FoldingTrunk
from tf_esm.modeling import precision
from tf_esm.modeling.buckets import FOLD_LENGTH_BUCKETS
from tf_esm.modeling.encoder import TFEsmMainLayer
from tf_esm.modeling.pretrained import EsmPretrainedIO
from tf_esm.modeling.outputs import ModelOutput

DEFAULT_CHAIN_LINKER = "G" * 25
DEFAULT_RESIDUE_INDEX_OFFSET = 512
# Lengths the compiled inference path pads to (longer inputs: the next multiple of the last step, 512), so a
# handful of compiled programs serve all lengths; padding costs at most ~1.5x in length.
DEFAULT_LENGTH_BUCKETS = FOLD_LENGTH_BUCKETS
# Keras dtype policies the ESM stem may be built in (`stem_precision`). The half ones store the stem's weights in half
# precision; the numerics inside follow HF's `.half()` stem on a CPU (float32 layer norms, softmax and rotary,
# float32 accumulation in the matmuls): tf_esm/modeling/precision.py.
STEM_DTYPES = ("float32", "float16", "bfloat16", "mixed_float16")



@dataclass(repr=False, eq=False)
class TFEsmForProteinFoldingOutput(ModelOutput):
    """Outputs of `TFEsmForProteinFolding`, named as in the reference. Per-block outputs (`frames`,
    `sidechain_frames`, `unnormalized_angles`, `angles`, `positions`, `states`, `lddt_head`) have a leading
    structure-module-block axis. `chain_index` is set by `infer` only."""

    frames: Any = None
    sidechain_frames: Any = None
    unnormalized_angles: Any = None
    angles: Any = None
    positions: Any = None
    states: Any = None
    s_s: Any = None
    s_z: Any = None
    distogram_logits: Any = None
    lm_logits: Any = None
    aatype: Any = None
    atom14_atom_exists: Any = None
    residx_atom14_to_atom37: Any = None
    residx_atom37_to_atom14: Any = None
    atom37_atom_exists: Any = None
    residue_index: Any = None
    lddt_head: Any = None
    plddt: Any = None
    ptm_logits: Any = None
    ptm: Any = None
    aligned_confidence_probs: Any = None
    predicted_aligned_error: Any = None
    max_predicted_aligned_error: Any = None
    chain_index: Any = None


class _SequentialMLP(keras.layers.Layer):
    """LayerNorm + dense layers named like PyTorch Sequential indices (`0`, `1`, `3`), ReLU between them."""

    def __init__(self, units, names=("1", "3"), **kwargs):
        super().__init__(**kwargs)
        self.units = tuple(units)
        self.norm = LayerNorm("0")
        self.dense_layers = [keras.layers.Dense(u, name=n) for u, n in zip(units, names)]

    def build(self, input_shape):
        self.norm.build(input_shape)
        shape = tuple(input_shape)
        for layer in self.dense_layers:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)

    def call(self, x):
        x = self.norm(x)
        for index, layer in enumerate(self.dense_layers):
            x = layer(ops.relu(x) if index else x)
        return x


def _gpu_available():
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from tf_esm.folding import compiled_tf

        return compiled_tf.gpu_available()
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def encode_sequence(sequence, residue_index_offset=DEFAULT_RESIDUE_INDEX_OFFSET, chain_linker=DEFAULT_CHAIN_LINKER):
    """One sequence (chains separated by ':') -> (aatype, residue_index, linker_mask, chain_index) arrays.

    Chains are joined by `chain_linker`; each new chain's residue indices jump by `residue_index_offset`, so
    the relative-position embedding sees them as far apart. Linker residues get `linker_mask` 0 (their atoms are
    dropped from the outputs) and belong to the preceding chain.
    """
    chains = sequence.split(":")
    if any(len(chain) == 0 for chain in chains):
        raise rc.InvalidSequenceError(f"Cannot fold an empty sequence or chain (got {sequence!r}).")
    linker = chain_linker or ""
    rc.sequence_to_aatype(linker)  # the linker must be foldable too
    residue_index, linker_mask, chain_index = [], [], []
    for number, chain in enumerate(chains):
        # Each chain is followed by the linker (except the last); the linker counts with the chain before it.
        tail = linker if number < len(chains) - 1 else ""
        start = len(residue_index)
        residue_index.extend(range(start + number * residue_index_offset,
                                   start + number * residue_index_offset + len(chain) + len(tail)))
        linker_mask.extend([1.0] * len(chain) + [0.0] * len(tail))
        chain_index.extend([number] * (len(chain) + len(tail)))
    aatype = rc.sequence_to_aatype(linker.join(chains))
    residue_index = np.asarray(residue_index, dtype=np.int64)
    return aatype, residue_index, np.asarray(linker_mask, np.float32), np.asarray(chain_index, np.int64)


@keras.saving.register_keras_serializable(package="tf_esm")
class TFEsmForProteinFolding(CompiledInference, EsmPretrainedIO, keras.Model):
    """ESMFold: predicts 3D structure and confidence from a protein sequence.

    An ESM-2 stem (run without gradient; in float16 when `esmfold_config.fp16_esm` and a GPU is present, see
    `stem_precision`) gives per-layer residue embeddings, combined by learned softmax weights (`esm_s_combine`) and
    projected (`esm_s_mlp`), plus an amino-acid embedding. The folding trunk refines sequence and pair states with
    recycling; the structure module builds frames, torsion angles and atoms; heads predict distograms, pLDDT,
    pTM and aligned errors. Layer and weight names mirror the PyTorch reference, so HF checkpoints load with
    `from_pretrained`.

    Args:
        config: An `EsmConfig` with `is_folding_model=True` and an `esmfold_config`.
        stem_precision: Precision of the stem (`STEM_DTYPES`): "float32"; "float16" or "bfloat16" (the stem's
            weights are stored in that dtype, half the memory, and it computes in it, as HF's `fp16_esm` stem,
            which is `.half()`); "mixed_float16" (float32 weights, float16 compute: no memory saved); or None
            (the default): the precision a saved half stem was stored in (`config.esm_dtype`, written by
            `save_pretrained` and `tf-esm convert --stem-precision`), else "float16" when `fp16_esm` and a GPU is
            available, else "float32". A checkpoint of any dtype loads into any of them, each tensor rounded as it
            is assigned. The stem's hidden states are cast to float32 before the learned layer combination, as in
            the reference. The rest of the model is float32 (`from_pretrained(precision=...)` takes float32
            only). The same word as `tf-esm fold --stem-precision`; `esm_dtype=` is its deprecated name (the
            config.json key of a saved half stem keeps that name, for the files already written).

    Call args:
        input_ids: [B, L] AlphaFold residue indices (`ARNDCQEGHILKMFPSTWYV` then `X` -> 0..20), without
            special tokens.
        attention_mask: [B, L] 1 for residues, 0 for padding.
        position_ids: [B, L] residue indices (default 0..L-1).
        masking_pattern: [B, L] 1 where residues are masked (BERT-style training regularisation).
        num_recycles: Extra trunk passes; None means `trunk.max_recycles` passes in total.
        chunk_size: Row chunk of the pair operations (overrides `trunk.chunk_size`; same result).
        unpadded_length: When the inputs carry extra padding at the end (to reach a compiled length bucket), the
            length without it. Those positions are hidden from every residue and the outputs are cropped to
            `unpadded_length`, so they equal the outputs of the unpadded inputs.
        compiled: (`__call__` only) True, False or "auto" (see Inference paths): None (default) means
            `self.compiled_inference`. Used only for non-training calls with concrete inputs under TensorFlow or
            JAX.

    Inference paths: every non-training call with concrete inputs takes one path, chosen by `compiled` (else
    `compiled_inference`), never by what ran before, so the same call on the same input returns the same numbers.
    - False (the default under TensorFlow, `compiled_inference = None`): eager, at the inputs' own length. Under
      TensorFlow each stack of identical layers (the stem's layers, the trunk's blocks) runs through one traced
      function (`layers_tf.traced_in_eager`) and the structure module through one program for any length, so a
      call pays no whole-model compile.
    - True (the default under JAX): a compiled forward pass on inputs padded to a length bucket (`length_buckets`,
      `bucket_length`), the padding hidden as `unpadded_length` hides it and the outputs cropped back. The
      program is built once per (bucket, chunk size) and reused whatever the length within the bucket and the
      number of recycles (recycling and the structure-module blocks run as loop ops): faster per call when many
      proteins share a bucket, at the cost of one compile per bucket. TensorFlow traces a `tf.function`
      (`compiled_tf.py`) that also serves every batch size; JAX jit-compiles the stateless forward pass with the
      weights as arguments (`compiled_jax.py`), once per batch size too, and returns numpy arrays.
      `inference_trace_count` counts the compilations. Under JAX `inference_compiler_options` are XLA's compile
      options (None: LLVM optimisation level 1 on a CPU, for compile time); under TensorFlow
      `inference_jit_compile = True` compiles the graphs with XLA.
    - "auto" (opt-in): under TensorFlow the first call at a (length bucket, chunk size) runs eagerly and later ones
      compiled, so its outputs depend on call history: the two paths agree to about 1e-5 Angstrom in float32 and
      less closely with a half-precision stem (tests/test_folding_compiled.py bounds both). Under JAX, compiled.
    The two paths agree to float32 rounding (~1e-5 Angstrom); pTM is computed, as in the reference, over the
    batch's own length, not the bucket's. Inside either, `chunk_size` runs the pair operations in a sequential
    loop, so it bounds their memory.

    Examples:

    ```python
    >>> from tf_esm import TFEsmForProteinFolding
    >>> model = TFEsmForProteinFolding.from_pretrained("facebook/esmfold_v1")  # doctest: +SKIP
    >>> pdb_text = model.infer_pdb("MKTVRQERLKSIVRILERSKEPVSGAQLAEELSVSRQVIVQDIAYLRSLGYNIV")  # doctest: +SKIP
    ```
    """

    output_type = TFEsmForProteinFoldingOutput

    @classmethod
    def _uses_stored_weights(cls, precision, model_kwargs):
        # A half-precision stem casts 3B of the 3.5B parameters on loading.
        return precision == "float32" and model_kwargs.get("stem_precision") in (None, "float32")

    @classmethod
    def _precision_hint(cls):
        return (" Only the ESM-2 stem takes half precision: pass stem_precision='bfloat16' (or 'float16'), as "
                "`tf-esm fold --stem-precision`.")

    def _saved_config(self):
        # A half-precision stem is written as it is (bfloat16 in a version-3 tf_esm file): the config records it,
        # so the saved model builds its stem in that precision by default and maps those weights without a cast.
        config = self.config_class.from_dict(self.config.to_dict())
        if self.stem_precision in ("float16", "bfloat16"):
            config.esm_dtype = self.stem_precision
        elif hasattr(config, "esm_dtype"):
            del config.esm_dtype
        return config

    def _reference_buffers(self):
        # transformers keeps `af2_to_esm` as a persistent buffer (int64), so its checkpoints carry it: a
        # safetensors save has it too, and transformers' loading report lists nothing missing.
        return {"af2_to_esm": self.af2_to_esm.astype(np.int64)}

    @renamed_keywords(esm_dtype="stem_precision")
    def __init__(self, config, stem_precision=None, **kwargs):
        super().__init__(config, **kwargs)
        config = self.config
        if not getattr(config, "is_folding_model", False) or config.esmfold_config is None:
            raise ValueError("TFEsmForProteinFolding needs an EsmConfig with is_folding_model=True.")
        fold = config.esmfold_config
        trunk = fold.trunk
        if stem_precision is None:
            stem_precision = getattr(config, "esm_dtype", None)  # a half stem stored as it is (`_saved_config`)
        if stem_precision is None:
            stem_precision = "float16" if fold.fp16_esm and _gpu_available() else "float32"
        if stem_precision not in STEM_DTYPES:
            raise ValueError(f"stem_precision must be None or one of {', '.join(STEM_DTYPES)}; got "
                             f"{stem_precision!r}.")
        self.stem_precision = stem_precision
        if stem_precision in ("bfloat16", "float16"):
            precision.warn_if_slow(stem_precision)  # bfloat16 on a CPU without its instructions; float16 on a CPU
        with precision.dtype_policy_scope(stem_precision):
            self.esm = TFEsmMainLayer(config, add_pooling_layer=False, name="esm", dtype=stem_precision)
        self.esm.trainable = False

        self.n_tokens_embed = rc.restype_num + 3  # padding 0, residues 1..20, unknown 21, mask 22
        self.pad_idx, self.unk_idx, self.mask_idx = 0, self.n_tokens_embed - 2, self.n_tokens_embed - 1
        vocab = list(config.vocab_list)
        self.esm_dict_cls_idx = vocab.index("<cls>")
        self.esm_dict_mask_idx = vocab.index("<mask>")
        self.esm_dict_eos_idx = vocab.index("<eos>")
        self.esm_dict_padding_idx = vocab.index("<pad>")
        # AlphaFold index + 1 (0 = padding) -> ESM vocabulary id; a constant, recomputed rather than loaded.
        self.af2_to_esm = np.array([vocab.index("<pad>")] + [vocab.index(v) for v in rc.restypes_with_x], np.int32)

        c_s, c_z = trunk.sequence_state_dim, trunk.pairwise_state_dim
        self.esm_s_mlp = _SequentialMLP((c_s, c_s), name="esm_s_mlp")
        self.esm_z_mlp = None
        if fold.use_esm_attn_map:
            self.esm_z_mlp = _SequentialMLP((c_z,), names=("1",), name="esm_z_mlp")
        self.embedding = keras.layers.Embedding(self.n_tokens_embed, c_s, name="embedding") if fold.embed_aa else None
        self.trunk = FoldingTrunk(trunk, name="trunk")
        self.distogram_head = keras.layers.Dense(DISTOGRAM_BINS, name="distogram_head")
        self.ptm_head = keras.layers.Dense(DISTOGRAM_BINS, name="ptm_head")
        self.lm_head = keras.layers.Dense(self.n_tokens_embed, name="lm_head")
        self.lddt_head = LddtHead(fold.lddt_head_hid_dim, name="lddt_head")
        self.esm_s_combine = None
        self.compiled_inference = None  # the backend's default path (Inference paths)
        self._first_calls_done = set()  # "auto": the (bucket, chunk size, ...) keys whose first call ran eagerly
        self.length_buckets = DEFAULT_LENGTH_BUCKETS
        self.inference_jit_compile = False
        self.inference_compiler_options = None  # JAX: XLA compile options (None: compiled_jax's defaults)
        self._inference_functions = {}
        self.inference_trace_count = 0

    def build(self, input_shape=None):
        if self.built:
            return
        config = self.config
        trunk = config.esmfold_config.trunk
        self.esm.build(None)
        self.esm_s_combine = self.add_weight(name="esm_s_combine", shape=(config.num_hidden_layers + 1,),
                                             initializer="zeros")
        self.esm_s_mlp.build((None, None, config.hidden_size))
        if self.esm_z_mlp is not None:
            self.esm_z_mlp.build((None, None, None, config.num_hidden_layers * config.num_attention_heads))
        if self.embedding is not None:
            self.embedding.build((None, None))
        seq_shape = (None, None, trunk.sequence_state_dim)
        pair_shape = (None, None, None, trunk.pairwise_state_dim)
        self.trunk.build(seq_shape, pair_shape)
        self.distogram_head.build(pair_shape)
        self.ptm_head.build(pair_shape)
        self.lm_head.build(seq_shape)
        self.lddt_head.build((None, None, None, trunk.structure_module.sequence_dim))
        self.built = True

    def get_config(self):
        config = super().get_config()
        config["stem_precision"] = self.stem_precision
        return config

    def __getattr__(self, name):
        # The deprecated attribute name, outside `dir()` so that Keras' saving (which walks it) does not warn.
        if name == "esm_dtype":
            warnings.warn("TFEsmForProteinFolding.esm_dtype is deprecated; use .stem_precision instead.",
                          DeprecationWarning, stacklevel=2)
            return self.stem_precision
        # Under the PyTorch backend a layer is a torch Module, which keeps its sub-layers (`esm`, `trunk`, ...)
        # outside `__dict__` and finds them in its own `__getattr__`.
        module_getattr = getattr(super(), "__getattr__", None)
        if module_getattr is not None:
            return module_getattr(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def set_chunk_size(self, chunk_size):
        """Row chunk of the trunk's pair operations (None: unchunked). Lowers peak memory for long proteins."""
        self.trunk.set_chunk_size(chunk_size)

    # ------------------------------------------------------------------------------------------------ stem
    def af2_idx_to_esm_idx(self, aa, mask):
        aa = ops.where(ops.cast(mask, "bool"), ops.cast(aa, "int32") + 1, 0)
        return ops.take(ops.convert_to_tensor(self.af2_to_esm), aa, axis=0)

    def compute_language_model_representations(self, esmaa):
        """[B, L] ESM ids -> ([B, L, layers + 1, C] hidden states, [B, L, L, layers * heads] attentions or None)."""
        config = self.config
        fold = config.esmfold_config
        batch, length = ops.shape(esmaa)[0], ops.shape(esmaa)[1]
        if fold.bypass_lm:
            return ops.zeros((batch, length, config.num_hidden_layers + 1, config.hidden_size)), None
        bos = ops.full((batch, 1), self.esm_dict_cls_idx, dtype="int32")
        pad = ops.full((batch, 1), self.esm_dict_padding_idx, dtype="int32")
        tokens = ops.concatenate([bos, ops.cast(esmaa, "int32"), pad], axis=1)
        # <eos> goes right after the last residue (the first padding position).
        eos_position = ops.sum(ops.cast(ops.not_equal(tokens, self.esm_dict_padding_idx), "int32"), axis=1)
        is_eos = ops.equal(ops.arange(length + 2, dtype="int32")[None, :], eos_position[:, None])
        tokens = ops.where(is_eos, self.esm_dict_eos_idx, tokens)
        attention_mask = ops.cast(ops.not_equal(tokens, self.esm_dict_padding_idx), "int32")
        outputs = self.esm(tokens, attention_mask=attention_mask, output_hidden_states=True,
                           output_attentions=bool(fold.use_esm_attn_map))
        esm_s = ops.stack([ops.cast(h, "float32") for h in outputs.hidden_states], axis=2)[:, 1:-1]
        esm_z = None
        if fold.use_esm_attn_map:
            attentions = ops.stack([ops.cast(a, "float32") for a in outputs.attentions], axis=1)  # [B, N, H, Q, K]
            attentions = ops.transpose(attentions, (0, 4, 3, 1, 2))  # [B, K, Q, N, H], as fair-esm
            attentions = ops.reshape(attentions, (batch, length + 2, length + 2, -1))
            esm_z = attentions[:, 1:-1, 1:-1]
        return ops.stop_gradient(esm_s), None if esm_z is None else ops.stop_gradient(esm_z)

    # ------------------------------------------------------------------------------------------------ forward
    def call(self, input_ids: Any, attention_mask: Any = None, position_ids: Any = None,
             masking_pattern: Any = None, num_recycles: int | None = None, chunk_size: int | None = None,
             unpadded_length: Any = None, training: bool = False) -> TFEsmForProteinFoldingOutput:
        aa = ops.convert_to_tensor(input_ids)
        if len(aa.shape) != 2:
            raise ValueError(f"input_ids must have shape (batch, length); got {tuple(aa.shape)}.")
        out = self.padded_outputs(aa, attention_mask, position_ids, masking_pattern, num_recycles=num_recycles,
                                  chunk_size=chunk_size, unpadded_length=unpadded_length, training=training)
        if unpadded_length is not None:
            out = crop_outputs(out, unpadded_length)
        return TFEsmForProteinFoldingOutput(**out)

    def padded_outputs(self, input_ids, attention_mask=None, position_ids=None, masking_pattern=None,
                       num_recycles=None, chunk_size=None, unpadded_length=None, training=False):
        """`call`'s outputs as a dict, not yet cropped to `unpadded_length` (everything but pTM is per residue
        or per pair, so cropping is slicing; pTM is computed over the first `unpadded_length` residues here).
        The JAX compiled path crops outside the program, where shapes need not be static."""
        config = self.config
        fold = config.esmfold_config
        aa = ops.cast(ops.convert_to_tensor(input_ids), "int32")
        batch, length = ops.shape(aa)[0], ops.shape(aa)[1]
        if attention_mask is None:
            attention_mask = ops.ones_like(aa)
        attention_mask = ops.cast(ops.convert_to_tensor(attention_mask), "int32")
        if position_ids is None:
            position_ids = ops.broadcast_to(ops.arange(length, dtype="int32")[None], (batch, length))
        position_ids = ops.cast(ops.convert_to_tensor(position_ids), "int32")

        esmaa = self.af2_idx_to_esm_idx(aa, attention_mask)
        masked_aa = aa
        if masking_pattern is not None:
            masked = ops.equal(ops.cast(masking_pattern, "int32"), 1)
            masked_aa = ops.where(masked, self.mask_idx, aa)
            esmaa = ops.where(masked, self.esm_dict_mask_idx, esmaa)

        esm_s, esm_z = self.compute_language_model_representations(esmaa)
        if fold.esm_ablate_sequence:
            esm_s = esm_s * 0
        esm_s = ops.einsum("l,bnlc->bnc", ops.softmax(self.esm_s_combine, axis=0), esm_s)
        s_s_0 = self.esm_s_mlp(esm_s)
        trunk = fold.trunk
        if esm_z is not None and not fold.esm_ablate_pairwise:
            s_z_0 = self.esm_z_mlp(esm_z)
        else:
            s_z_0 = ops.zeros((batch, length, length, trunk.pairwise_state_dim), dtype=s_s_0.dtype)
        if self.embedding is not None:
            s_s_0 = s_s_0 + self.embedding(masked_aa)

        length_mask = None
        if unpadded_length is not None:
            length_mask = ops.arange(length, dtype="int32") < ops.cast(unpadded_length, "int32")
        structure = self.trunk(s_s_0, s_z_0, aa, position_ids, residue_mask=attention_mask,
                               no_recycles=num_recycles, chunk_size=chunk_size, length_mask=length_mask,
                               training=training)
        out = {key: structure[key] for key in BLOCK_OUTPUTS + ("s_z", "s_s")}

        distogram_logits = self.distogram_head(out["s_z"])
        out["distogram_logits"] = (distogram_logits + ops.swapaxes(distogram_logits, 1, 2)) / 2
        out["lm_logits"] = self.lm_head(out["s_s"])
        out["lddt_head"] = self.lddt_head(out["states"])
        out["ptm_logits"] = self.ptm_head(out["s_z"])
        out["aatype"] = aa
        out.update(make_atom14_masks(aa))
        residue_mask = ops.cast(attention_mask, "float32")[..., None]
        out["atom14_atom_exists"] = out["atom14_atom_exists"] * residue_mask
        out["atom37_atom_exists"] = out["atom37_atom_exists"] * residue_mask
        out["residue_index"] = position_ids
        out["plddt"] = categorical_lddt(out["lddt_head"][-1])
        if length_mask is None:
            out["ptm"] = compute_tm(out["ptm_logits"])
        else:  # as over the cropped logits: the appended residues weigh nothing, d0 counts the unpadded length
            out["ptm"] = compute_tm(out["ptm_logits"], residue_weights=ops.cast(length_mask, "float32"),
                                    num_residues=unpadded_length)
        out.update(compute_predicted_aligned_error(out["ptm_logits"]))
        return out

    # ------------------------------------------------------------------------------------------------ inference
    def infer(self, sequences: str | Sequence[str], position_ids=None,
              residue_index_offset: int = DEFAULT_RESIDUE_INDEX_OFFSET, chain_linker: str = DEFAULT_CHAIN_LINKER,
              num_recycles: int | None = None, chunk_size: int | None = None,
              compiled: bool | None = None) -> dict[str, np.ndarray]:
        """Fold one sequence or a list (padded into one batch). Returns numpy outputs.

        Sequences use upper-case one-letter codes (unknown letters fold as X). A sequence with chains separated
        by ':' is folded as a complex: chains are joined by `chain_linker` and their residue indices offset by
        `residue_index_offset`; linker atoms are removed (`atom37_atom_exists` 0) and `chain_index` says which
        chain each residue belongs to.

        Args:
            sequences: A string or a list of strings.
            position_ids: Optional [L] or [B, L] residue indices (single-chain input only).
            num_recycles, chunk_size: As in `call`.
            compiled: True, False or "auto": the inference path (None: `self.compiled_inference`; see the
                class's Inference paths).

        Raises:
            InvalidSequenceError: for characters the model cannot fold, or empty sequences/chains.
        """
        if isinstance(sequences, str):
            sequences = [sequences]
        if not sequences:
            raise rc.InvalidSequenceError("No sequences to fold.")
        encoded = [encode_sequence(s, residue_index_offset, chain_linker) for s in sequences]
        length = max(len(e[0]) for e in encoded)
        batch = len(encoded)
        aatype = np.zeros((batch, length), np.int32)
        mask = np.zeros((batch, length), np.int32)
        residue_index = np.zeros((batch, length), np.int64)
        linker_mask = np.zeros((batch, length), np.float32)
        chain_index = np.zeros((batch, length), np.int64)
        for row, (aa, residx, linker, chains) in enumerate(encoded):
            n = len(aa)
            aatype[row, :n], mask[row, :n], linker_mask[row, :n], chain_index[row, :n] = aa, 1, linker, chains
            chain_index[row, n:] = chains[-1]  # padding continues the last chain (no extra TER record)
            residue_index[row, :n] = residx
            residue_index[row, n:] = residx[-1] + 1 + np.arange(length - n)  # padding: masked out anyway
        if position_ids is not None:
            if any(":" in s for s in sequences):
                raise ValueError("position_ids cannot be combined with ':'-separated chains.")
            residue_index = np.broadcast_to(np.asarray(position_ids).reshape(-1, length), (batch, length))
        elif all(":" not in s for s in sequences):
            residue_index = np.broadcast_to(np.arange(length), (batch, length))  # as the reference
        if not self.built:
            self.build()
        output = self(aatype, attention_mask=mask, position_ids=residue_index, num_recycles=num_recycles,
                      chunk_size=chunk_size, compiled=compiled)
        output = {key: np.asarray(ops.convert_to_numpy(value)) for key, value in output.items()}
        output["atom37_atom_exists"] = output["atom37_atom_exists"] * linker_mask[..., None]
        output["chain_index"] = chain_index
        return TFEsmForProteinFoldingOutput(**output)

    @staticmethod
    def output_to_pdb(output):
        """PDB texts (one per batch element) of a folding output; B-factors are pLDDT."""
        return output_to_pdb({key: ops.convert_to_numpy(value) if not isinstance(value, np.ndarray) else value
                              for key, value in output.items()})

    def infer_pdb(self, sequence: str, *args, **kwargs) -> str:
        """Fold one sequence and return its PDB text."""
        if not isinstance(sequence, str):
            raise TypeError("infer_pdb takes one sequence string; use infer_pdbs for a list.")
        return self.output_to_pdb(self.infer(sequence, *args, **kwargs))[0]

    def infer_pdbs(self, sequences: Sequence[str], *args, **kwargs) -> list[str]:
        """Fold a list of sequences and return their PDB texts."""
        return self.output_to_pdb(self.infer(list(sequences), *args, **kwargs))
