"""Pretrained-model I/O shared by every tf_esm model (the encoders and ESMFold): the configuration, building,
`from_pretrained` / `save_pretrained` and `get_config`. Training machinery is `task.py`, for the encoder models."""

from __future__ import annotations

import logging
import os

from tf_esm._deprecation import apply_renames, renamed_keywords
from tf_esm.configuration import EsmConfig, check_overrides

logger = logging.getLogger("tf_esm")


class EsmPretrainedIO:
    """Mixin (before `keras.Model` in the bases): a model built from one `EsmConfig` that loads any checkpoint
    `tf_esm.io.checkpoints.read_checkpoint` reads and saves an HF-style directory."""

    config_class = EsmConfig
    base_model_prefix = "esm"
    # Precisions `from_pretrained(precision=...)` builds this class in (`tf_esm.modeling.precision`).
    supported_dtypes = ("float32",)

    def __init__(self, config, **kwargs):
        if isinstance(config, dict):
            config = self.config_class.from_dict(config)
        super().__init__(**kwargs)
        self.config = config

    def __call__(self, *args, **kwargs):
        # A tokenizer's BatchEncoding (a dict subclass) is not a structure Keras accepts as a positional input.
        if args and isinstance(args[0], dict) and type(args[0]) is not dict:
            args = (dict(args[0]),) + args[1:]
        return super().__call__(*args, **kwargs)

    def build(self, input_shape=None):
        for layer in self._sublayers():
            layer.build(None)
        self.built = True

    def _sublayers(self):
        return [self.esm]

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    def _default_tokenizer(self):
        """The tokenizer `save_pretrained` writes when given none (ESM-2's `vocab.txt` is written separately)."""
        return None

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(cls.config_class.from_dict(config.pop("config")), **config)

    # ---------------------------------------------------------------------------------------------- checkpoints
    @classmethod
    def _uses_stored_weights(cls, precision, model_kwargs):
        """Whether a model built with these arguments keeps the checkpoint's float32 values as they are (so a
        memory-mapped file's pages are worth faulting in while the model is built), rather than casting them."""
        return precision == "float32"

    @classmethod
    def _populated_weights(cls, precision, model_kwargs):
        """What a memory-mapped checkpoint faults in while the model is built (`read_checkpoint`'s `populate`):
        everything when the stored values are used as they are, nothing when they are cast."""
        return cls._uses_stored_weights(precision, model_kwargs)

    @classmethod
    def _precision_hint(cls):
        """What to say after `from_pretrained(precision=...)` names a precision this class is not built in."""
        return ""

    @classmethod
    def _constructor_arguments(cls):
        """Keywords of `from_pretrained` that go to the constructor (the rest override config attributes)."""
        import inspect

        own = set(inspect.signature(cls.__init__).parameters) - {"self", "config", "kwargs"}
        return own | {"name", "trainable"}  # keras.Model's

    @classmethod
    @renamed_keywords(dtype="precision")
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, config: EsmConfig | None = None,
                        strict: bool = False, precision: str = "float32", weights_cache="auto", **kwargs):
        """Build the model and load weights from a local directory, a checkpoint file, or a hub id.

        Accepts HF PyTorch directories (`model.safetensors`, `pytorch_model.bin`, sharded with an index json),
        directories written by `save_pretrained`, fair-esm `.pt` files, and hub ids such as
        `facebook/esm2_t6_8M_UR50D` (downloaded when online). Task heads absent from the checkpoint are newly
        initialised (a warning lists them); tensors the model does not use are ignored (a warning lists them).
        A tensor with the wrong shape is an error that names it.

        Args:
            path_or_hub_id: Directory, weight file inside a directory, fair-esm `.pt` file, or hub id.
            config: An `EsmConfig` to use instead of the checkpoint's own.
            strict: Raise instead of warning on missing or unexpected tensors.
            precision: "float32" (default), or "bfloat16" for inference: every weight is stored in bfloat16
                (rounded once, here) and matmuls run in bfloat16, with layer norms and softmax in float32
                (`tf_esm.modeling.precision`). Warns on a CPU without bfloat16 instructions (slower there). The
                same word as `tf-esm embed --precision`; `dtype=` is its deprecated name. ESMFold builds in
                float32 and takes its stem's precision as `stem_precision=` instead.
            weights_cache: (TensorFlow) load a PyTorch-layout checkpoint (safetensors, `.bin`) through a copy in
                tf_esm's own layout, converted once into a cache and memory-mapped after, so the weights are
                file-backed pages the kernel can reclaim instead of the process's own memory (`io/weights_cache.py`):
                "auto" (default) for checkpoints of 8 GiB or more, True always, False never, or a cache folder.
            **kwargs: Arguments of the model's constructor (e.g. `add_pooling_layer=False`); every other
                keyword overrides a config attribute (e.g. `num_labels=3`). A name that is neither is a
                TypeError, so a misspelt argument is not silently written into the configuration.
        """
        from tf_esm.io.checkpoints import read_checkpoint
        from tf_esm.io.weights import finish_initialization, load_state_dict
        from tf_esm.keras_compat import deferred_initialization
        from tf_esm.modeling.precision import building_in, check_precision, warn_if_slow

        where = f"{cls.__name__}.from_pretrained"
        precision = check_precision(precision)
        if precision not in cls.supported_dtypes:
            raise ValueError(f"{cls.__name__} supports precision {', '.join(cls.supported_dtypes)}; got "
                             f"{precision!r}.{cls._precision_hint()}")
        apply_renames(kwargs, getattr(cls.__init__, "renamed_keywords", {}), where)
        constructor_args = cls._constructor_arguments()
        model_kwargs = {name: kwargs.pop(name) for name in list(kwargs) if name in constructor_args}
        if config is not None:
            check_overrides(config, kwargs, where, constructor_args | {"config", "strict", "precision", "weights_cache"})
        # The checkpoint's own `architectures` (not a config passed in) names the class its heads belong to.
        own_config = config is None
        config, state_dict, source = read_checkpoint(
            path_or_hub_id, config, populate=cls._populated_weights(precision, model_kwargs))
        cls._check_config_class(config, path_or_hub_id)
        check_overrides(config, kwargs, where, constructor_args | {"config", "strict", "precision", "weights_cache"})
        architectures = getattr(config, "architectures", None) if own_config else None
        for name, value in kwargs.items():
            setattr(config, name, value)
        config.validate()
        # No random values for the weights the checkpoint replaces.
        with deferred_initialization(), building_in(precision):
            model = cls(config, **model_kwargs)
            model.build()
        state_dict = _through_weights_cache(model, state_dict, source, weights_cache,
                                            populate=cls._populated_weights(precision, model_kwargs))
        try:
            load_state_dict(model, state_dict, strict=strict, source=source, architectures=architectures)
        finally:
            finish_initialization(model)
        warn_if_slow(precision)
        return model

    @classmethod
    def _check_config_class(cls, config, reference):
        """A checkpoint of another model family (an ESM C directory given to an ESM-2 class, or the reverse) is an
        error that names the class that loads it."""
        if isinstance(config, cls.config_class):
            return
        family = {"EsmcConfig": "ESM C (TFEsmcModel, TFEsmcForMaskedLM, ...)",
                  "EsmConfig": "ESM-2 / ESM-1 (TFEsmModel, TFEsmForMaskedLM, ...)"}
        raise ValueError(f"{reference} is a {family.get(type(config).__name__, type(config).__name__)} checkpoint "
                         f"(its config.json's model_type is {getattr(config, 'model_type', None)!r}); "
                         f"{cls.__name__} loads {family.get(cls.config_class.__name__, cls.config_class.__name__)} "
                         "checkpoints.")

    def _saved_config(self):
        """The configuration `save_pretrained` writes (the model's own; subclasses may note how it was built)."""
        return self.config

    @classmethod
    def reference_architecture(cls):
        """The transformers name of this class (`TFEsmForSequenceClassification` -> `EsmForSequenceClassification`).

        `save_pretrained` writes it as `architectures`, so a saved directory loads (and exports) as the class that
        was saved, not as the checkpoint it was first loaded from. A user subclass names its nearest tf_esm base.
        """
        for klass in cls.__mro__:
            if klass.__module__.startswith("tf_esm.") and klass.__name__.startswith("TFEsm"):
                return klass.__name__.removeprefix("TF")
        return cls.__name__

    def save_pretrained(self, save_directory: str | os.PathLike, format: str = "h5", tokenizer=None,
                        overwrite: bool = False) -> None:
        """Write `config.json`, the weights (`tf_esm_model.h5`, or `model.safetensors`, which PyTorch
        transformers loads too) and the vocabulary (the tokenizer's files, or the standard ESM `vocab.txt`).

        Every file is written under a temporary name and all are renamed into place at the end, so an
        interrupted save leaves the directory as it was. A non-empty `save_directory` is only written into with
        `overwrite=True` (which replaces these files and leaves any others alone).
        """
        import tempfile

        from tf_esm.storage.atomic import StagedFiles, check_target, write_text_atomic
        from tf_esm.configuration import CONFIG_NAME, ESM2_VOCAB
        from tf_esm.io.weights import (
            H5_WEIGHTS_NAME,
            SAFE_WEIGHTS_NAME,
            check_not_mapped_from,
            model_state_dict,
            save_weights_safetensors,
        )
        from tf_esm.io.native_h5 import save_weights_h5
        from tf_esm.modeling.lora import is_lora_variable

        if format not in ("h5", "safetensors"):
            raise ValueError(f"format must be 'h5' or 'safetensors', got {format!r}.")
        if not self.built:
            self.build()
        if any(is_lora_variable(variable) for variable in self.weights):
            raise ValueError(
                "This model has LoRA adapters: save them with model.save_lora_weights(path), or save a plain "
                "checkpoint with tf_esm.modeling.lora.merge_lora(model).save_pretrained(directory)."
            )
        check_target(save_directory, overwrite)
        check_not_mapped_from(self, save_directory)
        with StagedFiles(save_directory) as staged:
            config = self._saved_config()
            config = type(config).from_dict(config.to_dict(), architectures=[self.reference_architecture()])
            write_text_atomic(staged.path(CONFIG_NAME), config.to_json_string())
            if format == "h5":
                save_weights_h5(self, staged.path(H5_WEIGHTS_NAME))
            else:
                save_weights_safetensors(model_state_dict(self), staged.path(SAFE_WEIGHTS_NAME))
            if tokenizer is not None:
                with tempfile.TemporaryDirectory(prefix=".tokenizer-", dir=save_directory) as tokenizer_dir:
                    tokenizer.save_pretrained(tokenizer_dir)
                    for name in os.listdir(tokenizer_dir):
                        os.replace(os.path.join(tokenizer_dir, name), staged.path(name))
            elif self._default_tokenizer() is not None:
                with tempfile.TemporaryDirectory(prefix=".tokenizer-", dir=save_directory) as tokenizer_dir:
                    self._default_tokenizer().save_pretrained(tokenizer_dir)
                    for name in os.listdir(tokenizer_dir):
                        os.replace(os.path.join(tokenizer_dir, name), staged.path(name))
            elif self.config.vocab_size == len(ESM2_VOCAB):
                vocab = self.config.vocab_list or ESM2_VOCAB
                write_text_atomic(staged.path("vocab.txt"), "\n".join(vocab) + "\n")


def main_layer_of(model):
    """The encoder main layer of a tf_esm model (`model.esm`: ESM-2/ESM-1 and ESMFold's stem, `model.esmc`: ESM C),
    or `model` itself when it is one."""
    for name in ("esm", "esmc"):
        layer = getattr(model, name, None)
        if layer is not None:
            return layer
    return model


def _through_weights_cache(model, state_dict, source, option, populate):
    """`state_dict`, or the memory-mapped converted copy of it from the cache (written first when absent), when
    `option` applies to `source` under TensorFlow (`io/weights_cache.py`; only TensorFlow's variables adopt a
    mapping's memory)."""
    import keras

    from tf_esm.io import weights_cache
    from tf_esm.io.native_h5 import read_h5
    from tf_esm.io.weights import matched_state_dict, model_variables

    if keras.backend.backend() != "tensorflow" or not weights_cache.applies(source, option):
        return state_dict
    variables = model_variables(model)
    cache_dir = option if isinstance(option, (str, os.PathLike)) and option != "auto" else None
    path = weights_cache.converted_path(source, variables, cache_dir)
    if not os.path.isfile(path):
        logger.warning("Converting %s once into %s (tf_esm's layout, memory-mapped on every later load).",
                       source, os.path.dirname(path))
        weights_cache.write_converted(matched_state_dict(state_dict, variables, source), variables, path)
    return read_h5(path, populate)
