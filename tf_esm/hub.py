"""`tf_esm.hub` is `tf_esm.io.hub` (moved there in the layered layout; this path stays importable, same module object)."""

import sys

from tf_esm.io import hub as _module

sys.modules[__name__] = _module
