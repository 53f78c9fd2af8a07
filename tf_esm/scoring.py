"""`tf_esm.scoring` is `tf_esm.pipelines.scoring` (moved there in the layered layout; this path stays importable, same module object)."""

import sys

from tf_esm.pipelines import scoring as _module

sys.modules[__name__] = _module
