"""`tf_esm.atomic` is `tf_esm.io.atomic` (moved there in the layered layout; this path stays importable, same module object)."""

import sys

from tf_esm.io import atomic as _module

sys.modules[__name__] = _module
