"""The standard library's hub client (hub_fetch.py, server side) against the stand-in hub (sim/hub_server.py)
on loopback: whole repositories and single files, tokens, and what a hostile or broken hub cannot do."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llava_devserver import assets_manifest as am
from llava_devserver import hub_fetch
from llava_devserver.sim import hub_server

REPO_ID = "openai/clip-vit-large-patch14-336"
TOKEN = "hf_UnitTestToken0123456789"


def _serve(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    repo = tmp_path / "hub" / REPO_ID
    (repo / "sub").mkdir(parents=True)
    (repo / "config.json").write_text('{"model_type": "clip_vision_model"}\n')
    (repo / "sub" / "weights.bin").write_bytes(os.urandom(300_000))
    data = tmp_path / "hub" / "datasets" / "liuhaotian" / "LLaVA-Pretrain"
    data.mkdir(parents=True)
    (data / "blip_laion_cc_sbu_558k.json").write_text("[]\n")
    return tmp_path / "hub"


@pytest.fixture
def hub(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for url in _serve(hub_server.make_server(str(root), 0, host="127.0.0.1")):
        monkeypatch.setenv("HF_ENDPOINT", url)
        yield url


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_whole_repository_arrives_as_the_hub_has_it(hub: str, root: Path, tmp_path: Path) -> None:
    dest = tmp_path / "vision"
    got = hub_fetch.download(REPO_ID, "main", "model", str(dest))
    assert _files(dest) == _files(root / REPO_ID)
    assert got["files"] == 2 and got["bytes"] == 300_000 + len('{"model_type": "clip_vision_model"}\n')
    # the commit the listing named is what the files were resolved at
    sha, names = hub_fetch.repo_files(REPO_ID, "main", "model")
    assert got["commit"] == sha and names == ["config.json", "sub/weights.bin"]
    assert hub_fetch.download(REPO_ID, sha, "model", str(tmp_path / "again"))["commit"] == sha


def test_a_single_file_of_a_dataset(hub: str, tmp_path: Path) -> None:
    dest = tmp_path / "data" / "blip_laion_cc_sbu_558k.json"
    hub_fetch.download(
        "liuhaotian/LLaVA-Pretrain", "main", "dataset", str(dest), "blip_laion_cc_sbu_558k.json"
    )
    assert dest.read_text() == "[]\n"
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary file left


def test_errors_name_the_url_and_never_the_token(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for url in _serve(hub_server.make_server(str(root), 0, token=TOKEN, host="127.0.0.1")):
        monkeypatch.setenv("HF_ENDPOINT", url)
        with pytest.raises(hub_fetch.HubError) as info:
            hub_fetch.download(REPO_ID, "main", "model", str(tmp_path / "v"), token="hf_wrong")
        assert f"GET {url}/api/models/{REPO_ID}/revision/main: HTTP 401" in str(info.value)
        assert "hf_wrong" not in str(info.value)
        hub_fetch.download(REPO_ID, "main", "model", str(tmp_path / "v"), token=TOKEN)
        assert (tmp_path / "v" / "config.json").exists()
        with pytest.raises(hub_fetch.HubError, match="HTTP 404"):
            hub_fetch.download("openai/missing", "main", "model", str(tmp_path / "m"), token=TOKEN)
        with pytest.raises(hub_fetch.HubError, match="HTTP 404"):
            hub_fetch.download(REPO_ID, "v9", "model", str(tmp_path / "r"), token=TOKEN)


class _Hostile(BaseHTTPRequestHandler):
    """A hub whose listing points outside the download folder, or whose file breaks off."""

    listing: tuple[str, ...] = ("../escaped.txt",)

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/api/"):
            body = json.dumps(
                {"sha": "0" * 40, "siblings": [{"rfilename": n} for n in self.listing]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", "1000")  # announces 1000 bytes, sends 10 and hangs up
        self.end_headers()
        self.wfile.write(b"x" * 10)
        self.close_connection = True


@pytest.mark.parametrize("name", ["../escaped.txt", "/etc/passwd", "a//b", "a/./b", "a\\b", ""])
def test_a_hostile_listing_writes_nothing(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    handler = type("H", (_Hostile,), {"listing": (name,)})
    for url in _serve(ThreadingHTTPServer(("127.0.0.1", 0), handler)):
        monkeypatch.setenv("HF_ENDPOINT", url)
        dest = tmp_path / "dest"
        with pytest.raises(hub_fetch.HubError, match="not a plain relative path"):
            hub_fetch.download(REPO_ID, "main", "model", str(dest))
    assert not dest.exists() and not (tmp_path / "escaped.txt").exists()


def test_a_download_that_breaks_off_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    handler = type("H", (_Hostile,), {"listing": ("config.json",)})
    for url in _serve(ThreadingHTTPServer(("127.0.0.1", 0), handler)):
        monkeypatch.setenv("HF_ENDPOINT", url)
        dest = tmp_path / "dest"
        with pytest.raises(hub_fetch.HubError, match=r"broke off|announced"):
            hub_fetch.download(REPO_ID, "main", "model", str(dest))
    assert list(dest.iterdir()) == []  # neither config.json nor a temporary file


def test_the_manifest_helper_uses_it_without_huggingface_hub(
    hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    out = am.hub_download(REPO_ID, "main", "model", str(tmp_path / "vision"), None)
    assert out["ok"] and out["client"] == "hub_fetch" and out["files"] == 2
    failed = am.hub_download("openai/none", "main", "model", str(tmp_path / "none"), None)
    assert not failed["ok"] and failed["code"] == 1
    assert (
        f"model openai/none@main from {hub}: GET {hub}/api/models/openai/none/revision/main: HTTP 404"
        in (failed["error"])
    )
