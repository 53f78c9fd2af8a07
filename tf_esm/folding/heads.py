"""ESMFold's output heads and the confidence metrics computed from them.

* `distogram_head` (pair -> 64 distance bins, symmetrised), `ptm_head` (pair -> 64 aligned-error bins) and
  `lm_head` (sequence -> residue types) are plain dense layers on the model.
* `LddtHead` predicts, for every structure-module state, a 50-bin lDDT distribution per atom37 slot.
* `categorical_lddt`, `compute_tm` and `compute_predicted_aligned_error` turn those logits into pLDDT, pTM
  and PAE, with the reference's bin definitions.
"""

from __future__ import annotations

import keras
from keras import ops

from tf_esm.folding.primitives import LayerNorm

LDDT_BINS = 50
DISTOGRAM_BINS = 64
ALIGNED_ERROR_MAX_BIN = 31


@keras.saving.register_keras_serializable(package="tf_esm")
class LddtHead(keras.layers.Layer):
    """LayerNorm then three dense layers (no activations, as in the reference): [*, C] -> [*, 37, bins].

    Sub-layers follow PyTorch's Sequential: `0` (norm), `1`, `2`, `3`.
    """

    def __init__(self, hidden_dim, num_atoms=37, bins=LDDT_BINS, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim, self.num_atoms, self.bins = hidden_dim, num_atoms, bins
        self.norm = LayerNorm("0")
        self.linear_1 = keras.layers.Dense(hidden_dim, name="1")
        self.linear_2 = keras.layers.Dense(hidden_dim, name="2")
        self.linear_3 = keras.layers.Dense(num_atoms * bins, name="3")

    def build(self, input_shape):
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_dim,)
        self.norm.build(input_shape)
        self.linear_1.build(input_shape)
        self.linear_2.build(hidden_shape)
        self.linear_3.build(hidden_shape)

    def call(self, states):
        logits = self.linear_3(self.linear_2(self.linear_1(self.norm(states))))
        return ops.reshape(logits, tuple(ops.shape(logits)[:-1]) + (self.num_atoms, self.bins))

    def get_config(self):
        config = super().get_config()
        config.update(hidden_dim=self.hidden_dim, num_atoms=self.num_atoms, bins=self.bins)
        return config


def categorical_lddt(logits, bins=LDDT_BINS):
    """Expected lDDT in [0, 1] under [*, bins] logits over equal-width bins of [0, 1]."""
    centers = (ops.arange(bins, dtype="float32") + 0.5) / bins
    return ops.sum(ops.softmax(logits, axis=-1) * centers, axis=-1)


def _aligned_error_bin_centers(max_bin=ALIGNED_ERROR_MAX_BIN, num_bins=DISTOGRAM_BINS):
    # num_bins - 1 equally spaced boundaries on [0, max_bin]; the last bin is open-ended.
    step = max_bin / (num_bins - 2)
    return ops.arange(num_bins, dtype="float32") * step + step / 2


def compute_predicted_aligned_error(logits, max_bin=ALIGNED_ERROR_MAX_BIN, num_bins=DISTOGRAM_BINS):
    """PAE from [*, L, L, bins] logits.

    Returns:
        dict with `aligned_confidence_probs` [*, L, L, bins], `predicted_aligned_error` [*, L, L] (Angstrom) and
        `max_predicted_aligned_error` (scalar: the centre of the last bin).
    """
    centers = _aligned_error_bin_centers(max_bin, num_bins)
    probs = ops.softmax(logits, axis=-1)
    return {
        "aligned_confidence_probs": probs,
        "predicted_aligned_error": ops.sum(probs * centers, axis=-1),
        "max_predicted_aligned_error": centers[-1],
    }


def compute_tm(logits, residue_weights=None, max_bin=ALIGNED_ERROR_MAX_BIN, num_bins=DISTOGRAM_BINS, eps=1e-8,
               num_residues=None):
    """Predicted TM-score from [*, L, L, bins] aligned-error logits: the best alignment over all residues
    (and, like the reference, over the whole batch), as one number.

    Args:
        residue_weights: [L] weights of the residues (default: all ones, i.e. padding included).
        num_residues: The length that sets the TM-score's distance scale d0 (default L; may be a tensor). With
            residue weights zero beyond it, the score equals that of the logits cropped to `num_residues`.
    """
    length = ops.shape(logits)[-2]
    if residue_weights is None:
        residue_weights = ops.ones((length,), dtype="float32")
    centers = _aligned_error_bin_centers(max_bin, num_bins)
    scale_length = length if num_residues is None else num_residues
    clipped = ops.maximum(ops.cast(scale_length, "float32"), 19.0)  # d0 is defined for at least 19 residues
    d0 = 1.24 * ops.power(clipped - 15.0, 1.0 / 3) - 1.8
    tm_per_bin = 1.0 / (1.0 + centers**2 / d0**2)
    predicted_tm = ops.sum(ops.softmax(logits, axis=-1) * tm_per_bin, axis=-1)  # [*, L, L]
    normalised_weights = residue_weights / (eps + ops.sum(residue_weights))
    per_alignment = ops.sum(predicted_tm * normalised_weights, axis=-1)  # [*, L]
    weighted = ops.reshape(per_alignment * residue_weights, (-1,))
    return ops.take(ops.reshape(per_alignment, (-1,)), ops.argmax(weighted))
