"""Resolve a model reference (local directory, file, or hub id) to local files.

Hub ids are downloaded and cached with `huggingface_hub` when the machine is online; offline, the error says how
to pass a local directory instead.
"""

from __future__ import annotations

import os


class ModelNotFoundError(OSError):
    """A model directory, file or hub id could not be resolved to local files.

    `offline_repo` is the hub id when the cause is that the hub cannot be reached and the files are not cached
    (callers such as the CLI then say how to pass a local copy in their own terms), else None.
    """

    def __init__(self, message, offline_repo=None):
        super().__init__(message)
        self.offline_repo = offline_repo


def _looks_like_hub_id(reference):
    parts = reference.split("/")
    return len(parts) == 2 and all(parts) and not reference.startswith((".", "/", "~"))


def resolve_file(reference, filename, required=True):
    """Return a local path to `filename` inside the model `reference`, or None if absent and not `required`."""
    reference = os.fspath(reference)
    if os.path.isdir(reference):
        path = os.path.join(reference, filename)
        if os.path.isfile(path):
            return path
        if required:
            raise ModelNotFoundError(f"{reference!r} has no {filename}.")
        return None
    if os.path.isfile(reference):
        if os.path.basename(reference) == filename or not required:
            return reference if os.path.basename(reference) == filename else None
        raise ModelNotFoundError(f"{reference!r} is a file; expected a model directory containing {filename}.")
    if not _looks_like_hub_id(reference):
        raise ModelNotFoundError(
            f"No model directory {reference!r}: it does not exist locally and is not a hub id like "
            "'facebook/esm2_t6_8M_UR50D'."
        )
    return _download(reference, filename, required)


def offline_reason(repo_id, filename=None):
    """The first sentence of every "cannot download while offline" message."""
    what = f"{filename} of {repo_id!r}" if filename else repr(repo_id)
    return (f"Could not download {what} from the Hugging Face hub: this machine is offline (or HF_HUB_OFFLINE is "
            "set) and it is not in the local cache.")


def _hub_reachable(timeout=3.0):
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _download(repo_id, filename, required):
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as error:  # pragma: no cover - huggingface_hub is a runtime dependency
        raise ModelNotFoundError(f"huggingface_hub is needed to download {repo_id!r}: {error}") from None
    offline_message = (
        f"{offline_reason(repo_id, filename)} Download the model elsewhere and pass its local directory instead, "
        f"e.g. `from_pretrained('/path/to/{repo_id.split('/')[-1]}')`."
    )
    try:  # the local cache first: works offline, costs no network round trip
        return hf_hub_download(repo_id, filename, local_files_only=True)
    except (LocalEntryNotFoundError, EntryNotFoundError):
        pass
    if not _hub_reachable():  # fail in seconds instead of huggingface_hub's retries with back-off
        raise ModelNotFoundError(offline_message, offline_repo=repo_id)
    try:
        return hf_hub_download(repo_id, filename)
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(offline_message, offline_repo=repo_id) from None
    except EntryNotFoundError:
        if required:
            raise ModelNotFoundError(f"Hub model {repo_id!r} has no file {filename}.") from None
        return None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"Hub model {repo_id!r} does not exist (or is private).") from None
    except Exception as error:  # network errors come in many types (LocalEntryNotFoundError, httpx errors, ...)
        if not required and "404" in str(error):
            return None
        raise ModelNotFoundError(f"{offline_message} ({type(error).__name__})", offline_repo=repo_id) from None
