#!/usr/bin/env python
"""Convert a fair-esm checkpoint (ESM-2, ESM-1b, ESM-1v `.pt`) or an HF model directory into a tf_esm directory.

    python conversion_scripts/convert_esm_checkpoint.py --checkpoint esm2_t6_8M_UR50D.pt --output esm2_t6_8M_tf

The contact-regression weights are read from `<stem>-contact-regression.pt` beside the checkpoint (ESM-1v has
none). The output loads with `tf_esm.TFEsmForMaskedLM.from_pretrained(OUTPUT)`.
"""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="fair-esm .pt file or HF model directory")
    parser.add_argument("--output", required=True, help="output directory (must not exist or be empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--stem-precision", choices=("float32", "float16", "bfloat16"), default=None,
                        help="ESMFold only: store the ESM-2 stem in this precision (as `tf-esm convert`)")
    args = parser.parse_args(argv)

    from tf_esm import import_tensorflow_quietly

    import_tensorflow_quietly()
    from tf_esm.pipelines.convert import convert_checkpoint
    from tf_esm.io.weights import CheckpointError

    try:
        convert_checkpoint(args.checkpoint, args.output, overwrite=args.overwrite, stem_precision=args.stem_precision)
    except (CheckpointError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
