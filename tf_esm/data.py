"""`tf_esm.data` is `tf_esm.pipelines.data` (moved there in the layered layout; this path stays importable, same module object)."""

import sys

from tf_esm.pipelines import data as _module

sys.modules[__name__] = _module
