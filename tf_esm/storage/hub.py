"""Resolve a model reference (local directory, file, or hub id) to local files.

Hub ids are downloaded and cached with `huggingface_hub` (its cache, proxy settings and offline mode); each failure
says which it is (offline, not found, gated, not authorised, disk full) and, offline, how to pass a local directory
instead.
"""

from __future__ import annotations

import errno
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


def resolve_file(reference, filename, required=True, revision=None, token=None, cache_dir=None):
    """Return a local path to `filename` inside the model `reference`, or None if absent and not `required`.

    For a hub id, `revision` (a branch, tag or commit), `token` and `cache_dir` are huggingface_hub's."""
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
    return _download(reference, filename, required, revision=revision, token=token, cache_dir=cache_dir)


def offline_reason(repo_id, filename=None):
    """The first sentence of every "cannot download while offline" message."""
    what = f"{filename} of {repo_id!r}" if filename else repr(repo_id)
    return (f"Could not download {what} from the Hugging Face hub: this machine is offline (or HF_HUB_OFFLINE is "
            "set) and it is not in the local cache.")


def _hub_reachable(timeout=5.0):
    """Whether the hub answers one request, sent through huggingface_hub's own HTTP session (so its proxy
    settings apply), with no retries; False under HF_HUB_OFFLINE."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in constants.ENV_VARS_TRUE_VALUES:
        return False
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception:  # noqa: BLE001 - connection, proxy, TLS and timeout errors all mean "not reachable now"
        return False
    return True


def _download(repo_id, filename, required, revision=None, token=None, cache_dir=None):
    """`filename` of the hub model `repo_id`, through huggingface_hub: its cache, its proxy settings (HTTPS_PROXY
    and the rest, as its HTTP client reads them), its offline mode (HF_HUB_OFFLINE), a revision checked against the
    hub when online, so a cached model is refreshed when the hub's files change. Each failure is one sentence
    that says which: offline, not found, gated, not authorised, no such revision or file, disk full."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub import errors as hub_errors
    except ImportError as error:  # pragma: no cover - huggingface_hub is a runtime dependency
        raise ModelNotFoundError(f"huggingface_hub is needed to download {repo_id!r}: {error}") from None
    at = f" at revision {revision!r}" if revision else ""
    try:
        # Unreachable: the cache alone, at once (huggingface_hub would retry each file for ~25 s).
        local_only = not _hub_reachable()
        return hf_hub_download(repo_id, filename, revision=revision, token=token, cache_dir=cache_dir,
                               local_files_only=local_only)
    except hub_errors.LocalEntryNotFoundError:  # (first: it is an EntryNotFoundError) offline (or the hub unreachable) and not in the cache
        raise ModelNotFoundError(
            f"{offline_reason(repo_id, filename)} Download the model elsewhere and pass its local directory "
            f"instead, e.g. `from_pretrained('/path/to/{repo_id.split('/')[-1]}')`.", offline_repo=repo_id) from None
    except hub_errors.GatedRepoError:
        raise ModelNotFoundError(f"Hub model {repo_id!r} is gated: accept its terms on huggingface.co, then pass "
                                 "token=... (or log in with `hf auth login`).") from None
    except hub_errors.RepositoryNotFoundError:
        raise ModelNotFoundError(f"Hub model {repo_id!r} does not exist, or is private: check the id, or pass "
                                 "token=... for a private model.") from None
    except hub_errors.RevisionNotFoundError:
        raise ModelNotFoundError(f"Hub model {repo_id!r} has no revision {revision!r}.") from None
    except hub_errors.EntryNotFoundError:  # the file is not in the repository (when online)
        if required:
            raise ModelNotFoundError(f"Hub model {repo_id!r}{at} has no file {filename}.") from None
        return None
    except hub_errors.HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            raise ModelNotFoundError(f"Hub model {repo_id!r}: not authorised (HTTP {status}); pass a valid "
                                     "token=... (or log in with `hf auth login`).") from None
        raise ModelNotFoundError(f"Hub model {repo_id!r}: the hub answered {error}".rstrip(".") + ".") from None
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise ModelNotFoundError(f"No space left on the device while downloading {filename} of {repo_id!r} "
                                     "into the hub cache: free space, or pass cache_dir=... on a larger disk."
                                     ) from None
        raise
