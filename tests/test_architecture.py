"""The package's shape: the import-linter contracts in setup.cfg hold, and no module grows past 600 lines."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "tf_esm")
MAX_MODULE_LINES = 600


def test_import_contracts_hold():
    lint_imports = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    assert os.path.exists(lint_imports), "import-linter is not installed next to this Python: pip install -e .[test]"
    # The checkout first on the path, so the contracts are checked against this tree, not an installed copy.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([lint_imports, "--config", os.path.join(REPO, "setup.cfg")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_module_is_over_600_lines():
    too_long = {}
    for directory, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8") as handle:
                    lines = sum(1 for _ in handle)
                if lines > MAX_MODULE_LINES:
                    too_long[os.path.relpath(path, REPO)] = lines
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"
