"""TensorFlow-only part of weight loading: a freshly read array handed to TensorFlow without a copy.

`tf.convert_to_tensor` copies a NumPy array into a buffer of its own; for the full-size ESMFold that copy was
~13 s of a load (benchmarks/RESULTS.md, "Loading"). An array aligned to TensorFlow's buffer alignment can instead
be wrapped through DLPack: the tensor, and a variable initialised from it, keep the array's memory. Only arrays
that the checkpoint readers allocated for this purpose (`weights.read_buffer`) are wrapped, never a caller's
array, which the caller might change later.
"""

from __future__ import annotations

import numpy as np

from tf_esm.backend import require_tensorflow

tf = require_tensorflow("tf_esm.io.weights_tf (loading without copies)")

# TensorFlow (Eigen) checks that a CPU buffer is aligned to 64 bytes before operating on it.
ALIGNMENT = 64
_WRAPPABLE = {np.dtype(name) for name in ("<f4", "<f2", "<f8", "<i4", "<i8")}


def wrap(array):
    """A `tf.Tensor` sharing `array`'s memory, or None when it cannot (unaligned, strided, other dtype).

    A bfloat16 array (ml_dtypes, which NumPy cannot export through DLPack) goes through its 16-bit patterns and a
    bitcast, which shares the buffer too."""
    bfloat16 = array.dtype.name == "bfloat16"
    if ((array.dtype not in _WRAPPABLE and not bfloat16) or not array.flags.c_contiguous or array.size == 0
            or array.ctypes.data % ALIGNMENT):
        return None
    if bfloat16:
        bits = tf.experimental.dlpack.from_dlpack(array.view(np.uint16).__dlpack__())
        return tf.bitcast(bits, tf.bfloat16)
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
