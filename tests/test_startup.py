"""Start-up: TensorFlow's native start-up lines filtered, never a warning or a fatal abort; the command exits
through the interpreter's ordinary shutdown."""

import os
import subprocess
import sys
import textwrap

import pytest

from tf_esm import startup

INFO_LINE = "I0000 00:00:1796648559.190221   11349 port.cc:153] oneDNN custom operations are on."
WARNING_LINE = "W0000 00:00:1796648559.190527   11349 cpu_feature_guard.cc:10] a native warning"
FATAL_LINE = "F0000 00:00:1796648559.190600   11349 cpu_feature_guard.cc:20] a fatal native error"
NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def _run_child(body):
    """Run `body` in a fresh Python process (file descriptor 2 of its own); its exit status and stderr."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    script = textwrap.dedent(f"""
        import os, sys
        from tf_esm.startup import native_log_lines_filtered
        lines = {[NOTICE, INFO_LINE, WARNING_LINE, FATAL_LINE, "a line from a library"]!r}
    """) + textwrap.dedent(body)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    return completed.returncode, completed.stderr.splitlines()


def test_only_the_lines_below_the_level_are_dropped():
    status, lines = _run_child("""
        with native_log_lines_filtered(1):
            os.write(2, ("\\n".join(lines) + "\\n").encode())
            print("from Python", file=sys.stderr)
        print("after", file=sys.stderr)
    """)
    assert status == 0
    assert lines == [WARNING_LINE, FATAL_LINE, "a line from a library", "from Python", "after"]


def test_the_last_words_of_a_process_that_aborts_during_the_import_reach_stderr():
    status, lines = _run_child("""
        with native_log_lines_filtered(3):
            os.write(2, (lines[1] + "\\n" + lines[3] + "\\n").encode())
            os.abort()
    """)
    assert status != 0
    assert FATAL_LINE in lines and INFO_LINE not in lines


def test_without_a_filter_process_nothing_is_hidden(monkeypatch, capfd):
    def no_process(*args, **kwargs):
        raise OSError("no processes here")

    monkeypatch.setattr(startup.subprocess, "Popen", no_process)
    for level in (3, 0):
        with startup.native_log_lines_filtered(level):
            os.write(2, f"{INFO_LINE}\n".encode())
        assert capfd.readouterr().err == f"{INFO_LINE}\n"


@pytest.mark.parametrize("value, level", [(None, 0), ("2", 2), ("verbose", 0)])
def test_native_log_level_reads_the_tensorflow_variable(monkeypatch, value, level):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    if value is not None:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", value)
    assert startup.native_log_level() == level


def test_the_command_exits_through_the_ordinary_shutdown(monkeypatch):
    from tf_esm.cli import dispatch

    def no_fast_exit(status):
        raise AssertionError("os._exit skips exit handlers and other libraries' clean-up")

    monkeypatch.setattr(dispatch, "main", lambda: 3)
    monkeypatch.setattr(os, "_exit", no_fast_exit)
    with pytest.raises(SystemExit) as exited:
        dispatch.console_main()
    assert exited.value.code == 3
