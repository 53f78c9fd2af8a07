"""`tf_esm.weights` is `tf_esm.io.weights` (moved there in the layered layout; this path stays importable, same module object)."""

import sys

from tf_esm.io import weights as _module

sys.modules[__name__] = _module
