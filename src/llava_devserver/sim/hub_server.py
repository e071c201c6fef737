"""A stand-in Hugging Face hub: its HTTP interface for plain downloads, over a folder (standard library).

No hub is reachable here, so the simulated fleet (`sim up --hub`) and the unit tests of hub_fetch serve
repositories from ROOT with the URLs and answers of the real hub:

- `GET /api/models/ORG/NAME/revision/REV` (and `/api/datasets/...`): `{"id", "sha", "siblings":
  [{"rfilename"}]}`, the files of ROOT/ORG/NAME (ROOT/datasets/ORG/NAME), `sha` a commit id derived from
  the files; REV is `main` or that sha, anything else is 404 (`Revision Not Found`, as the hub says);
- `GET /ORG/NAME/resolve/REV/PATH` (`/datasets/ORG/NAME/resolve/...`): the file, with Content-Length and
  an ETag; 404 for a file not in the repository;
- with a token (SIM_HUB_TOKEN in the environment, never an argument), a request without
  `Authorization: Bearer TOKEN` gets 401, as a gated repository's.

Every request is logged on stderr as `METHOD PATH STATUS`.

    [SIM_HUB_TOKEN=T] python3 hub_server.py --root DIR [--port 8080]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORT = 8080


def repo_listing(folder: str) -> list[str]:
    """The files of a repository folder, relative, sorted (links are not served)."""
    names = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(top, d)))
        for name in files:
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                names.append(os.path.relpath(path, folder).replace(os.sep, "/"))
    return sorted(names)


def commit_of(folder: str, names: list[str]) -> str:
    digest = hashlib.sha1()
    for name in names:
        digest.update(f"{name}\0{os.path.getsize(os.path.join(folder, name))}\0".encode())
    return digest.hexdigest()


class HubHandler(BaseHTTPRequestHandler):
    root = "."
    token: str | None = None
    server_version = "llava-sim-hub/1"

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(format % args + "\n")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        sys.stderr.write(f"{self.command} {self.path} {code}\n")
        sys.stderr.flush()

    def _send(
        self, status: int, body: bytes, kind: str = "application/json", etag: str | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if etag:
            self.send_header("ETag", f'"{etag}"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode())

    def _repo(self, parts: list[str]) -> tuple[str, str, list[str]] | None:
        """(kind, folder, rest) for `[datasets/]ORG/NAME/...`; None when there is no such repository."""
        kind = "model"
        if parts and parts[0] == "datasets":
            kind, parts = "dataset", parts[1:]
        if len(parts) < 2 or any(p in ("", ".", "..") for p in parts[:2]):
            return None
        folder = os.path.join(self.root, *(["datasets"] if kind == "dataset" else []), parts[0], parts[1])
        return (kind, folder, parts[2:]) if os.path.isdir(folder) else None

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            self._error(401, "Invalid credentials in Authorization header")
            return
        path = urllib.parse.urlsplit(self.path).path
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if len(parts) >= 2 and parts[0] == "api" and parts[1] in ("models", "datasets"):
            self._revision(parts)
        else:
            self._resolve(parts)

    def _revision(self, parts: list[str]) -> None:
        # api, models|datasets, ORG, NAME, revision, REV
        found = self._repo((["datasets"] if parts[1] == "datasets" else []) + parts[2:4])
        if found is None or len(parts) != 6 or parts[4] != "revision":
            self._error(404, "Repository Not Found")
            return
        _, folder, _ = found
        names = repo_listing(folder)
        sha = commit_of(folder, names)
        if parts[5] not in ("main", sha):
            self._error(404, f"Revision Not Found for url {self.path}")
            return
        body = {"id": f"{parts[2]}/{parts[3]}", "sha": sha, "siblings": [{"rfilename": n} for n in names]}
        self._send(200, json.dumps(body).encode())

    def _resolve(self, parts: list[str]) -> None:
        found = self._repo(parts)
        if found is None or len(found[2]) < 3 or found[2][0] != "resolve":
            self._error(404, "Repository Not Found")
            return
        _, folder, rest = found
        names = repo_listing(folder)
        name = "/".join(rest[2:])
        if rest[1] not in ("main", commit_of(folder, names)):
            self._error(404, "Revision Not Found")
            return
        if name not in names:
            self._error(404, "Entry Not Found")
            return
        with open(os.path.join(folder, *name.split("/")), "rb") as handle:
            data = handle.read()
        self._send(200, data, "application/octet-stream", hashlib.sha256(data).hexdigest())


def make_server(root: str, port: int = PORT, token: str | None = None, host: str = "") -> ThreadingHTTPServer:
    handler = type("Handler", (HubHandler,), {"root": root, "token": token})
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args(argv)
    server = make_server(args.root, args.port, os.environ.get("SIM_HUB_TOKEN") or None)
    sys.stderr.write(f"serving {args.root} on port {args.port}\n")
    sys.stderr.flush()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
