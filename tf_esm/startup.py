"""Start TensorFlow without its C++ start-up lines on stderr.

TensorFlow's C++ runtime logs a few informational lines when it is imported (oneDNN custom operations, no CUDA
drivers), before its logging is initialised, so `TF_CPP_MIN_LOG_LEVEL` does not hide them. While TensorFlow loads,
`import_tensorflow_quietly` passes file descriptor 2 through a small filter process that drops exactly the lines
that variable means to hide (the native log lines below its level, and absl's "before InitializeLog" notice) and
forwards everything else at once: a warning, an error or the last words of a fatal abort during the import still
reach stderr, also when the import kills the process. The `tf-esm` command calls it first; in a script, call it
before anything imports TensorFlow:

```python
import tf_esm
tf_esm.import_tensorflow_quietly()      # then import keras / tensorflow / tf_esm models as usual
```
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

# Imported by `import tensorflow` when installed, only to probe for optional features, and never used by the
# `tf-esm` command under the TensorFlow backend: matplotlib (Keras' image-gallery helpers; --png draws through
# matplotlib.figure, imported when needed), pandas (Keras' DataFrame inputs to `fit`) and JAX (TensorFlow Lite's
# JAX converter). Together over a second of every command's start-up where all three are installed
# (benchmarks/RESULTS.md). Hidden only inside the command's own process, which passes Keras NumPy arrays and
# tf.data, so the features that then see these packages as missing are ones it never calls.
_UNUSED_BY_THE_COMMAND = ("matplotlib", "matplotlib.pyplot", "pandas")
_UNUSED_UNDER_TENSORFLOW = ("jax", "jaxlib")

# The filter process: stdin -> stdout line by line, less the native log lines below `level` (absl's format,
# "I0000 00:00:1796648559.190221   11349 port.cc:153] ...": I, W, E = 0, 1, 2) and absl's notice.
_FILTER = r"""
import re, sys
level = int(sys.argv[1])
native_line = re.compile(rb"([IWE])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
notice = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
out = sys.stdout.buffer
for line in iter(sys.stdin.buffer.readline, b""):
    match = native_line.match(line)
    if line.rstrip(b"\r\n") == notice or (match and b"IWE".index(match.group(1)) < level):
        continue
    out.write(line)
    out.flush()
"""


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


def native_log_level():
    """`TF_CPP_MIN_LOG_LEVEL` as a number (0: everything is shown, also when it is unset or not a number)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def native_log_lines_filtered(level):
    """For the duration, native log lines below `level` written to file descriptor 2 are dropped; everything else
    written there reaches stderr as it is written (a separate process forwards it, so nothing is lost when this
    one dies). Where no filter process can be started, nothing is filtered."""
    if level <= 0 or not sys.executable:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        forward = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILTER, str(level)],
                                   stdin=subprocess.PIPE, stdout=saved, stderr=saved)
    except OSError:
        os.close(saved)
        yield
        return
    try:
        os.dup2(forward.stdin.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        forward.stdin.close()  # the filter reads to the end and exits
        forward.wait()


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
    """Import Keras, and TensorFlow when it is Keras' backend, with `TF_CPP_MIN_LOG_LEVEL=3` unless set and the
    start-up lines that variable misses filtered out (`native_log_lines_filtered`). Under KERAS_BACKEND=jax or
    torch TensorFlow is not imported at all. A no-op once TensorFlow is imported. `for_command`: also keep the
    optional packages the command never uses out of the import (the `tf-esm` command; they import normally
    later)."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow reads it when it is imported
    hidden = ()
    if for_command:
        hidden = _UNUSED_BY_THE_COMMAND
        if configured_keras_backend() == "tensorflow":
            hidden += _UNUSED_UNDER_TENSORFLOW
    with native_log_lines_filtered(native_log_level()), modules_hidden(hidden):
        import keras  # under the TensorFlow backend this imports TensorFlow

        if keras.backend.backend() == "tensorflow":
            import tensorflow  # noqa: F401
