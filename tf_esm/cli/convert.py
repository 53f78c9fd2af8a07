"""`tf-esm convert`: a fair-esm .pt checkpoint or an HF directory into a tf_esm model directory."""

from __future__ import annotations

from tf_esm.cli.common import CliError, check_model_packages

NAME = "convert"
HELP = "Convert a fair-esm .pt checkpoint or an HF directory into a tf_esm directory."
EPILOG = """\
SRC is a fair-esm checkpoint (esm2_t6_8M_UR50D.pt, ...; its -contact-regression.pt is read from beside it) or an
HF model directory (ESM-2, ESM-1b/1v, any task head, or ESMFold). DST receives config.json, tf_esm_model.h5 and
vocab.txt; it is written to a temporary directory and renamed, so a failed conversion leaves DST as it was.
tf_esm_model.h5 holds each weight in its Keras variable's layout, so loading DST maps the file instead of
reading it (for a large model, e.g. ESMFold, that is most of the loading time). For ESMFold,
--stem-precision bfloat16 stores the ESM-2 stem rounded once to bfloat16 (half its size): the converted
model then folds with a bfloat16 stem by default, its weights mapped as they are, with no cast on loading.

examples:
  tf-esm convert esm2_t6_8M_UR50D.pt esm2_t6_8M_tf
  tf-esm convert ./esm1v_hf ./esm1v_tf --overwrite
  tf-esm convert ./esmfold_v1 ./esmfold_v1_tf
  tf-esm convert ./esmfold_v1 ./esmfold_v1_bf16 --stem-precision bfloat16
"""


def check_arguments(args, console):
    """Before TensorFlow starts: torch, where SRC is read with it."""
    check_model_packages(args.src)


def add_arguments(parser):
    parser.add_argument("src", metavar="SRC", help="fair-esm .pt file or HF model directory")
    parser.add_argument("dst", metavar="DST", help="output directory (must not exist or be empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    parser.add_argument("--stem-precision", choices=("float32", "float16", "bfloat16"), default=None,
                        help="ESMFold only: store the ESM-2 stem's weights in this precision (rounded once, half "
                             "the size for float16/bfloat16); the converted model builds its stem in it by "
                             "default. Default: float32, the checkpoint's precision")


def run(args, console):
    from tf_esm.pipelines.convert import convert_checkpoint

    try:
        convert_checkpoint(args.src, args.dst, overwrite=args.overwrite, stem_precision=args.stem_precision)
    except FileExistsError as error:
        raise CliError(str(error).replace("overwrite=True (--overwrite)", "--overwrite")) from None
    except ValueError as error:
        raise CliError(str(error).replace("stem_precision", "--stem-precision")) from None
    console.info(f"converted {args.src} into {args.dst}.")
    return 0
