"""`python -m tf_esm.cli ...`, the same as `tf-esm ...`."""

from tf_esm.cli.dispatch import console_main

console_main()
