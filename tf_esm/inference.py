"""`tf_esm.inference` is `tf_esm.pipelines.inference` (moved there in the layered layout; this path stays importable, same module object)."""

import sys

from tf_esm.pipelines import inference as _module

sys.modules[__name__] = _module
