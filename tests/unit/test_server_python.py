"""Preflight's first check: the server's Python against what this ansible-core manages (server_python)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from llava_devserver import server_python


@pytest.mark.parametrize(
    "core, minimum",
    [("2.19.14", (3, 8)), ("2.18.0", (3, 8)), ("2.17.7", (3, 7)), ("2.16.3", (2, 7)), ("2.20.0", (3, 8))],
)
def test_minimum_target_python(core: str, minimum: tuple[int, int]) -> None:
    assert server_python.minimum_target_python(core) == minimum


def test_an_unreadable_ansible_version_is_an_error() -> None:
    with pytest.raises(ValueError, match="ansible-core version"):
        server_python.minimum_target_python("devel")


def _fake_python(directory: Path, name: str, version: str) -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _probe(candidates: list[str], path_dir: Path) -> dict[str, object]:
    done = subprocess.run(
        ["sh", "-c", server_python.probe_script(candidates)],
        capture_output=True, text=True, check=False, env={"PATH": f"{path_dir}:/usr/bin:/bin"},
    )  # fmt: skip
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def test_the_probe_picks_the_first_candidate_found_as_discovery_does(tmp_path: Path) -> None:
    # Names of no real Python, so that the control node's own interpreters are not found.
    _fake_python(tmp_path, "py-test-39", "3.9.9")
    _fake_python(tmp_path, "py-test-37", "3.7.9")
    probe = _probe(["py-test-missing", "py-test-39", "py-test-37"], tmp_path)
    values = server_python.parse_probe(str(probe["stdout"]))
    assert values["interpreter"] == str(tmp_path / "py-test-39")
    assert values["python_version"] == "3.9.9"
    assert set(values) >= {"interpreter", "python_version", "os_id", "os_version_id", "init"}


def test_python_37_fails_with_one_message_that_says_what_to_do(tmp_path: Path) -> None:
    _fake_python(tmp_path, "py-test-3", "3.7.9")
    probe = _probe(["py-test-38", "py-test-3"], tmp_path)
    result = server_python.assess(probe, "2.19.14", "devserver-1", ["py-test-38", "py-test-3"])
    problem = result["problem"]
    assert problem is not None
    assert problem.startswith("devserver-1 (")
    assert "Python 3.7.9" in problem and "ansible-core 2.19.14" in problem and "3.8 or newer" in problem
    assert "ansible_python_interpreter" in problem
    # ansible-core 2.17 still manages it.
    assert server_python.assess(probe, "2.17.7", "devserver-1")["problem"] is None


def test_python_39_passes_and_is_reported(tmp_path: Path) -> None:
    _fake_python(tmp_path, "py-test-39", "3.9.2")
    probe = _probe(["py-test-39"], tmp_path)
    result = server_python.assess(probe, "2.19.14", "devserver-2")
    assert result["problem"] is None
    assert result["python_version"] == "3.9.2"
    assert "Python 3.9.2" in result["summary"] and "ansible-core 2.19.14" in result["summary"]


def test_no_python_at_all(tmp_path: Path) -> None:
    probe = _probe(["python3.99-nowhere"], tmp_path)
    result = server_python.assess(probe, "2.19.14", "devserver-3", ["python3.99-nowhere"])
    assert result["problem"] is not None
    assert "no Python found (tried python3.99-nowhere)" in result["problem"]


def test_an_interpreter_that_does_not_run() -> None:
    probe = {
        "rc": 0,
        "stdout": "interpreter=/root/.pyenv/shims/python3.13\npython_version=pyenv: not found\n",
    }
    result = server_python.assess(probe, "2.19.14", "devserver-1")
    assert "does not run as Python (pyenv: not found)" in str(result["problem"])


def test_the_fingerprint_changes_with_the_os() -> None:
    debian = (
        "interpreter=/usr/bin/python3.11\npython_version=3.11.2\nos_id=debian\nos_version_id=12\ninit=tini\n"
    )
    hce = "interpreter=/usr/bin/python3.9\npython_version=3.9.2\nos_id=hce\nos_version_id=2.0\ninit=systemd\n"
    first = server_python.assess({"rc": 0, "stdout": debian}, "2.19.14", "h")["fingerprint"]
    second = server_python.assess({"rc": 0, "stdout": hce}, "2.19.14", "h")["fingerprint"]
    assert first != second
    assert first == server_python.assess({"rc": 0, "stdout": debian}, "2.19.14", "h")["fingerprint"]


def test_candidates_follow_the_configuration() -> None:
    assert server_python.interpreter_candidates("/opt/py/bin/python3", ["python3"]) == ["/opt/py/bin/python3"]
    assert server_python.interpreter_candidates("auto_silent", ["python3.9", "python3"]) == [
        "python3.9",
        "python3",
    ]
    assert server_python.interpreter_candidates(None, None) == ["python3"]
