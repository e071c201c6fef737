"""Download a Hugging Face repository with the standard library only (server side, Python 3.7+).

assets_manifest.py `hub-download` uses huggingface_hub where the server has it; DevServers do not ship it,
so this client speaks the hub's HTTP interface itself (what huggingface_hub and the mirrors such as
hf-mirror.com serve):

- `GET {endpoint}/api/{models|datasets}/{repo_id}/revision/{revision}`: the commit (`sha`) and the files
  (`siblings[].rfilename`);
- `GET {endpoint}/[datasets/]{repo_id}/resolve/{sha}/{file}` for each file (the hub redirects large files to
  its CDN; the token is sent to the endpoint only, never along a redirect).

urllib takes `http_proxy`/`https_proxy`/`no_proxy` from the environment, so a fleet behind a proxy downloads
through it. Each file is written to a temporary name in its folder and renamed when complete: an
interrupted download leaves no half file under the real name. File names come from the hub and are checked
before use (relative, no `..`, no empty or hidden-trick components): a hostile listing cannot write
outside `dest`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import posixpath
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = 60
_CHUNK = 1 << 20


class HubError(Exception):
    """The hub refused or the answer was not what the protocol says (the message names the URL)."""


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _kind(repo_type: str) -> str:
    if repo_type not in ("model", "dataset"):
        raise HubError(f"repo_type {repo_type!r} is not model or dataset")
    return repo_type + "s"


def _open(url: str, token: str | None) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "llava-devserver"})
    if token:  # unredirected: not handed on to the CDN the hub redirects to
        request.add_unredirected_header("Authorization", "Bearer " + token)
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        raise HubError(f"GET {url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise HubError(f"GET {url}: {reason}") from None


def safe_name(name: Any) -> str:
    """A file name of the listing as a relative path inside the repository, or HubError."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise HubError(f"the hub listed a file name that is not a plain relative path: {name!r}")
    parts = name.split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise HubError(f"the hub listed a file name that is not a plain relative path: {name!r}")
    return posixpath.join(*parts)


def repo_files(
    repo_id: str, revision: str, repo_type: str, token: str | None = None
) -> tuple[str, list[str]]:
    """(commit sha, file names) of the repository at `revision`."""
    quoted = urllib.parse.quote(revision, safe="")
    url = f"{endpoint()}/api/{_kind(repo_type)}/{repo_id}/revision/{quoted}"
    with _open(url, token) as answer:
        try:
            info = json.loads(answer.read().decode("utf-8"))
        except ValueError:
            raise HubError(f"GET {url}: the answer is not JSON") from None
    if not isinstance(info, dict) or not isinstance(info.get("siblings"), list):
        raise HubError(f"GET {url}: no file listing (siblings) in the answer")
    sha = info.get("sha") or revision
    names = [
        safe_name(entry.get("rfilename") if isinstance(entry, dict) else None) for entry in info["siblings"]
    ]
    return str(sha), names


def file_url(repo_id: str, commit: str, repo_type: str, name: str) -> str:
    prefix = "datasets/" if repo_type == "dataset" else ""
    path = urllib.parse.quote(name)
    return f"{endpoint()}/{prefix}{repo_id}/resolve/{urllib.parse.quote(commit, safe='')}/{path}"


def fetch_file(url: str, target: str, token: str | None = None) -> int:
    """Download `url` to `target` (temporary name, then rename); the bytes written."""
    folder = os.path.dirname(target) or "."
    os.makedirs(folder, exist_ok=True)
    handle, part = tempfile.mkstemp(prefix=".hub-", suffix=".part", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out, _open(url, token) as answer:
            expected = answer.headers.get("Content-Length")
            try:
                shutil.copyfileobj(answer, out, _CHUNK)
            except (http.client.HTTPException, ConnectionError, TimeoutError) as error:
                raise HubError(
                    f"GET {url}: the download broke off ({type(error).__name__}: {error})"
                ) from None
            size = out.tell()
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise HubError(f"GET {url}: {size} bytes arrived, the hub announced {expected}")
        os.chmod(part, 0o644)
        os.replace(part, target)
        return size
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise


def download(
    repo_id: str,
    revision: str,
    repo_type: str,
    dest: str,
    filename: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """The repository into the folder `dest`, or with `filename` that one file as the file `dest`."""
    if filename:
        name = safe_name(filename)
        size = fetch_file(file_url(repo_id, revision, repo_type, name), dest, token)
        return {"files": 1, "bytes": size}
    commit, names = repo_files(repo_id, revision, repo_type, token)
    total = 0
    for name in names:
        total += fetch_file(
            file_url(repo_id, commit, repo_type, name), os.path.join(dest, *name.split("/")), token
        )
    return {"files": len(names), "bytes": total, "commit": commit}
