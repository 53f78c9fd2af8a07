"""The wheel `python -m build` makes from the checkout: it carries LICENSE and NOTICE and the `tf-esm` entry point,
and the installed copy (not this checkout) embeds a FASTA file."""

import os
import shutil
import subprocess
import sys
import zipfile

import h5py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "NOTICE")


def _run(*command, **options):
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, **options)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_carries_the_licences_and_its_installed_copy_runs(tmp_path, reference_checkpoints):
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to setup.cfg
    source.mkdir()
    for name in SOURCES:
        shutil.copy(os.path.join(ROOT, name), source / name)
    shutil.copytree(os.path.join(ROOT, "tf_esm"), source / "tf_esm", ignore=shutil.ignore_patterns("__pycache__"))
    # --no-isolation: setuptools and wheel from this environment (no index needed).
    _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source))
    (wheel,) = (tmp_path / "dist").glob("tf_esm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
        assert f"{info}/licenses/LICENSE" in names and f"{info}/licenses/NOTICE" in names
        assert archive.read(f"{info}/licenses/LICENSE").decode().startswith("MIT License")
        assert "Apache License, Version 2.0" in archive.read(f"{info}/licenses/NOTICE").decode()
        assert "tf-esm = tf_esm.cli.dispatch:console_main" in archive.read(f"{info}/entry_points.txt").decode()
        assert "tf_esm/folding/_residue_tables.py" in names and not any(name.startswith("tests/") for name in names)

    site = tmp_path / "site"
    _run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site),
         str(wheel))
    # Only the installed copy on the path (the dependencies come from this interpreter's site-packages).
    env = dict(os.environ, PYTHONPATH=str(site))
    fasta = tmp_path / "p.fasta"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nGSHM\n")
    where = _run(sys.executable, "-c", "import tf_esm; print(tf_esm.__file__)", env=env, cwd=tmp_path)
    assert where.stdout.strip() == str(site / "tf_esm" / "__init__.py")
    version = _run(sys.executable, "-m", "tf_esm.cli", "--version", env=env, cwd=tmp_path)
    assert version.stdout.strip() == "tf-esm 0.1.0"
    _run(sys.executable, "-m", "tf_esm.cli", "embed", reference_checkpoints("rotary").path, str(fasta),
         str(tmp_path / "out.h5"), "--quiet", env=env, cwd=tmp_path)
    with h5py.File(tmp_path / "out.h5", "r") as handle:
        assert sorted(name.decode() for name in handle["ids"][()]) == ["a", "b"]
