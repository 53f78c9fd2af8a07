"""Files in and out, below the models: checkpoints, FASTA and embedding stores (the hub and crash-safe writes are
`tf_esm.storage`, below this layer).

Nothing here imports a model class; the models and everything above them read and write through this layer.
"""

from tf_esm.io.embedding_reader import read_embeddings

__all__ = ["read_embeddings"]
