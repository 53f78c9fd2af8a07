"""Files in and out, below the models: checkpoints, FASTA, the hub, crash-safe writers and embedding stores.

Nothing here imports a model class; the models and everything above them read and write through this layer.
"""

from tf_esm.io.embedding_reader import read_embeddings

__all__ = ["read_embeddings"]
