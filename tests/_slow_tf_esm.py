"""`tf-esm` with a pause after each stored embedding record: `python tests/_slow_tf_esm.py SECONDS ARGS...`.

With TF_ESM_TEST_FIRST_RECORD=PATH in the environment it also creates PATH when the first record is stored (the
moment embedding has started, for tests that watch the process).

Tests that kill or measure a run in a subprocess use it to make the embedding phase last a known time per record
(the pause is patched in here, so shipped code carries no test hook).
"""

import os
import sys
import time

from tf_esm.cli import main
from tf_esm.io import embedding_stores, hdf5_store, parquet_store


def _pausing(add, seconds):
    marker = os.environ.get("TF_ESM_TEST_FIRST_RECORD")

    def add_then_pause(self, *args, **kwargs):
        add(self, *args, **kwargs)
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
        time.sleep(seconds)

    return add_then_pause


if __name__ == "__main__":
    delay = float(sys.argv[1])
    for store in (hdf5_store.Hdf5Store, parquet_store.ParquetStore, embedding_stores.NpzStore):
        store.add = _pausing(store.add, delay)
    sys.exit(main(sys.argv[2:]))
