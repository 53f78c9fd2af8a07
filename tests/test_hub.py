"""Hub access through huggingface_hub (no network here: its download function is replaced). Each failure is a
distinct one-line message; `revision`, `token` and `cache_dir` reach huggingface_hub; an unreachable hub falls back
to the local cache at once."""

import errno
import types

import huggingface_hub
import pytest
from huggingface_hub import errors as hub_errors

from tf_esm.storage import hub
from tf_esm.storage.hub import ModelNotFoundError, resolve_file

REPO = "someone/esm2_tiny"


def _response(status):
    return types.SimpleNamespace(status_code=status, headers={}, request=None, url="https://huggingface.co/x",
                                 json=lambda: {}, text="")


def _raising(error):
    def download(*args, **kwargs):
        raise error
    return download


def _http_error(kind, status):
    try:
        return kind("message", response=_response(status))
    except Exception:  # noqa: BLE001 - constructors differ between huggingface_hub versions
        error = kind.__new__(kind)
        Exception.__init__(error, "message")
        error.response = _response(status)
        return error


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=5.0: True)


@pytest.mark.parametrize("error, words", [
    (lambda: _http_error(hub_errors.GatedRepoError, 403), "is gated"),
    (lambda: _http_error(hub_errors.RepositoryNotFoundError, 404), "does not exist, or is private"),
    (lambda: _http_error(hub_errors.RevisionNotFoundError, 404), "has no revision 'v9'"),
    (lambda: _http_error(hub_errors.HfHubHTTPError, 401), "not authorised (HTTP 401)"),
    (lambda: OSError(errno.ENOSPC, "No space left on device"), "No space left on the device"),
    (lambda: hub_errors.LocalEntryNotFoundError("not cached"), "this machine is offline"),
])
def test_each_failure_is_its_own_one_line_message(online, monkeypatch, error, words):
    monkeypatch.setattr(hub, "hf_hub_download", _raising(error()), raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raising(error()))
    with pytest.raises(ModelNotFoundError) as raised:
        resolve_file(REPO, "config.json", revision="v9")
    message = str(raised.value)
    assert words in message and "\n" not in message
    assert (raised.value.offline_repo == REPO) == (words == "this machine is offline")


def test_a_missing_optional_file_is_none_and_a_required_one_an_error(online, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raising(_http_error(hub_errors.EntryNotFoundError, 404)))
    assert resolve_file(REPO, "vocab.txt", required=False) is None
    with pytest.raises(ModelNotFoundError, match="has no file config.json"):
        resolve_file(REPO, "config.json")


def test_revision_token_and_cache_dir_reach_huggingface_hub_and_the_hub_is_asked_when_online(online, monkeypatch,
                                                                                              tmp_path):
    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    path = resolve_file(REPO, "config.json", revision="abc123", token="hf_x", cache_dir=str(tmp_path))
    assert path == str(tmp_path / "config.json")
    (_, filename, kwargs), = calls
    assert filename == "config.json"
    assert kwargs["revision"] == "abc123" and kwargs["token"] == "hf_x" and kwargs["cache_dir"] == str(tmp_path)
    assert kwargs["local_files_only"] is False  # online: huggingface_hub checks the cached copy is current


def test_an_unreachable_hub_reads_the_cache_without_retrying(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=5.0: False)
    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append(kwargs["local_files_only"])
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert resolve_file(REPO, "config.json") == str(tmp_path / "config.json")
    assert calls == [True]


def test_offline_mode_is_not_reachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub._hub_reachable() is False
