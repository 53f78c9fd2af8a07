"""`tf-esm` with a pause after each stored embedding record: `python tests/_slow_tf_esm.py SECONDS ARGS...`.

Tests that kill or measure a run in a subprocess use it to make the embedding phase last a known time per record
(the pause is patched in here, so shipped code carries no test hook).
"""

import sys
import time

from tf_esm.cli import main
from tf_esm.io import embedding_stores


def _pausing(add, seconds):
    def add_then_pause(self, *args, **kwargs):
        add(self, *args, **kwargs)
        time.sleep(seconds)

    return add_then_pause


if __name__ == "__main__":
    delay = float(sys.argv[1])
    for store in (embedding_stores.Hdf5Store, embedding_stores.NpzStore):
        store.add = _pausing(store.add, delay)
    sys.exit(main(sys.argv[2:]))
