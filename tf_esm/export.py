"""`tf_esm.export` is `tf_esm.pipelines.export` (moved there in the layered layout; this path stays importable, same module object)."""

import sys

from tf_esm.pipelines import export as _module

sys.modules[__name__] = _module
