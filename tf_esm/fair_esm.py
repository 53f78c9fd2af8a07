"""fair-esm checkpoints: reading (`tf_esm.io.fair_esm`) and conversion to tf_esm directories
(`tf_esm.pipelines.convert`), under the module path they had before the split."""

from tf_esm.io.fair_esm import (  # noqa: F401
    EOS_TOKEN_ID,
    FAIR_ESM_RENAMES,
    MASK_TOKEN_ID,
    PAD_TOKEN_ID,
    REGRESSION_NAMES,
    fair_esm_to_reference_name,
    has_regression_weights,
    read_fair_esm_checkpoint,
    regression_path,
)
from tf_esm.pipelines.convert import convert_checkpoint  # noqa: F401
