"""`tf_esm.fasta` is `tf_esm.io.fasta` (moved there in the layered layout; this path stays importable, same module object)."""

import sys

from tf_esm.io import fasta as _module

sys.modules[__name__] = _module
