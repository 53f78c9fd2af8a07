"""Work built on the models: the architecture lookup, checkpoint conversion, tf.data pipelines, batch embedding,
variant scoring and SavedModel export.

Nothing below this layer (models, tokenizers, configuration, io) imports from it.
"""
