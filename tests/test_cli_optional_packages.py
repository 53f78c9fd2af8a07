"""A `tf-esm` run that needs a missing optional package (pyarrow, apache-beam, matplotlib, torch) stops right after
parsing, before TensorFlow starts, with exit status 2 and the line that installs it."""

import json
import subprocess
import sys

# Runs `main` for each argument list with the packages hidden (a None entry in sys.modules is "not installed" to
# importlib), and reports each exit status, stderr, and whether TensorFlow was imported by then.
_CHILD = """
import contextlib, io, json, sys
for name in ("pyarrow", "apache_beam", "matplotlib", "torch"):
    sys.modules[name] = None
from tf_esm.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, err.getvalue(), "tensorflow" in sys.modules])
print(json.dumps(results))
"""


def test_missing_optional_packages_are_reported_before_tensorflow_starts(tmp_path):
    fasta = tmp_path / "p.fasta"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"")
    fair_esm = tmp_path / "esm2_t6_8M_UR50D.pt"
    fair_esm.write_bytes(b"")
    calls = {
        "Parquet output needs pyarrow": ["embed", model, fasta, tmp_path / "out.parquet"],
        "--runner needs apache-beam": ["embed", model, fasta, tmp_path / "shards", "--runner", "DirectRunner"],
        "--png needs matplotlib": ["contacts", model, fasta, tmp_path / "contacts", "--png"],
        "(a fair-esm .pt file) needs torch": ["score", fair_esm, "--sequence", "MK", "--mutations", fasta],
    }
    argvs = [[str(word) for word in argv] for argv in calls.values()]
    child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(argvs)], capture_output=True, text=True,
                           timeout=240)
    assert child.returncode == 0, child.stderr
    extras = {"pyarrow": "parquet", "apache-beam": "beam", "matplotlib": "plot", "torch": "torch"}
    for (expected, argv), (code, err, tensorflow_started) in zip(calls.items(), json.loads(child.stdout)):
        package = expected.rsplit(" ", 1)[1]
        assert code == 2, (argv, err)
        assert err.startswith("tf-esm: error: ") and err.count("\n") == 1, err
        assert f"{expected}, which is not installed: pip install {package} " in err, err
        assert f'pip install -e ".[{extras[package]}]"' in err, err
        assert not tensorflow_started, argv
    assert not (tmp_path / "contacts").exists() and not (tmp_path / "shards").exists()
