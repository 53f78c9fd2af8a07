"""`python -m tf_esm.cli ...`, the same as `tf-esm ...`."""

import sys

from tf_esm.cli import main

sys.exit(main())
