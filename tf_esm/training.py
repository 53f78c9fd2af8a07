"""`tf_esm.training` is `tf_esm.modeling.lora` (moved there in the layered layout; this path stays importable, same module object)."""

import sys

from tf_esm.modeling import lora as _module

sys.modules[__name__] = _module
