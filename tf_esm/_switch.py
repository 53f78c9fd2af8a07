"""A per-thread on/off switch for code that runs inside a `with` block (a context the callee asks about).

Four places need one: ESMFold's JAX tracing (`folding.primitives.compiling`), eager layer stacks traced once
(`modeling.layers_tf.traced_in_eager`), the eager structure module's one program
(`folding.compiled_tf.structure_module_traced`) and the loader's staging buffer (`io.buffers.staged_reads`). Threads do not see each
other's switch, and nested blocks restore the outer state.
"""

from __future__ import annotations

import contextlib
import threading


class ThreadSwitch(threading.local):
    """Off unless inside `with switch.on():` in this thread."""

    active = False

    def __bool__(self):
        return self.active

    @contextlib.contextmanager
    def on(self):
        previous, self.active = self.active, True
        try:
            yield
        finally:
            self.active = previous
