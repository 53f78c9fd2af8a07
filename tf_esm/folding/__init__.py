"""ESMFold in Keras: the folding trunk, triangular pair operations, the structure module, rigid-body maths,
residue constants and the PDB writer. `TFEsmForProteinFolding` is the model."""

from tf_esm.folding.model import TFEsmForProteinFolding, TFEsmForProteinFoldingOutput
from tf_esm.folding.residue_constants import InvalidSequenceError

__all__ = ["InvalidSequenceError", "TFEsmForProteinFolding", "TFEsmForProteinFoldingOutput"]
