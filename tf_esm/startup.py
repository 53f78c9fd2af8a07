"""Start TensorFlow without its C++ start-up lines on stderr.

TensorFlow's C++ runtime prints a few informational lines when it is imported (oneDNN custom operations, no CUDA
drivers, CPU instructions), before `TF_CPP_MIN_LOG_LEVEL` or any other setting can silence them; that variable only
hides the later ones. The only way to drop them is to point file descriptor 2 elsewhere while TensorFlow loads,
which is what `import_tensorflow_quietly` does (the `tf-esm` command calls it first). In a script, call it before
anything imports TensorFlow:

```python
import tf_esm
tf_esm.import_tensorflow_quietly()      # then import keras / tensorflow / tf_esm models as usual
```
"""

from __future__ import annotations

import contextlib
import os
import sys

# Imported by `import tensorflow` when installed, only to probe for optional features, and never used by the
# `tf-esm` command under the TensorFlow backend: matplotlib (Keras' image-gallery helpers; --png draws through
# matplotlib.figure, imported when needed), pandas (Keras' DataFrame inputs to `fit`) and JAX (TensorFlow Lite's
# JAX converter). Together about 1.4 s of the command's start-up where all three are installed.
_UNUSED_BY_THE_COMMAND = ("matplotlib", "matplotlib.pyplot", "pandas")
_UNUSED_UNDER_TENSORFLOW = ("jax", "jaxlib")


def configured_keras_backend():
    """The backend Keras will choose, read as Keras reads it (KERAS_BACKEND, else `backend` in
    $KERAS_HOME/keras.json or ~/.keras/keras.json), without importing Keras; "tensorflow" by default."""
    import json

    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as handle:
            return json.load(handle).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


@contextlib.contextmanager
def native_stderr_silenced():
    """Send file descriptor 2 to /dev/null for the duration (C++ libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def modules_hidden(names):
    """Make `import name` fail with ImportError (which importers treat as "not installed") for the duration; the
    modules import normally afterwards."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def import_tensorflow_quietly(for_command=False):
    """Import Keras, and TensorFlow when it is Keras' backend, with stderr silenced (and `TF_CPP_MIN_LOG_LEVEL=3`
    unless set). Under KERAS_BACKEND=jax or torch TensorFlow is not imported at all. A no-op once TensorFlow is
    imported. `for_command`: also keep the optional packages the command never uses out of the import (the
    `tf-esm` command; they import normally later)."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow reads it when it is imported
    hidden = ()
    if for_command:
        hidden = _UNUSED_BY_THE_COMMAND
        if configured_keras_backend() == "tensorflow":
            hidden += _UNUSED_UNDER_TENSORFLOW
    with native_stderr_silenced(), modules_hidden(hidden):
        import keras  # under the TensorFlow backend this imports TensorFlow

        if keras.backend.backend() == "tensorflow":
            import tensorflow  # noqa: F401
