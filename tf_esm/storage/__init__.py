"""Where tf_esm's files come from and how it writes them, below every other module (configuration, io, models):
`storage.hub` resolves a Hugging Face Hub id to local files (huggingface_hub), `storage.atomic` writes files and
directories durably (temporary file, fsync, rename)."""
