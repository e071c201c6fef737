"""The fleet's proxy settings: their rules, the environment every outbound part gets, and the detached
dockerd start script that reads it (run for real under sh, with a stand-in dockerd that records its
environment)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest

from fleet_settings import llava_of
from llava_devserver import job_guard, proxy, render
from llava_devserver.config import FleetValidationError, validate_fleet
from role_tasks import tasks_of, walk

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles/docker_engine"
URL = "http://proxy.corp.example:3128"


def fleet(package: str, **settings: Any) -> dict[str, dict[str, Any]]:
    host = {"ansible_host": "10.0.0.1", "ascendcloud_package": package}
    return {"ds-0": {**host, "per_device_train_batch_size": 32, "global_batch_size": 256, **settings}}


@pytest.mark.parametrize(
    "value",
    ["http://proxy.example.com:3128", "http://10.0.0.1:8888/", "https://[fd00::1]:3128", "http://proxy"],
)
def test_proxy_urls_that_are_accepted(value: str) -> None:
    assert proxy.check_proxy_url(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("http://user:hunter2@proxy:3128", "credentials"),
        ("socks5://proxy:1080", "is not a proxy URL"),
        ("http://proxy:99999", "outside 1-65535"),
        ("http://proxy:3128/path", "is not a proxy URL"),
        ("http://pro xy:3128", "is not a proxy URL"),
        ("http://proxy:3128\nX=1", "is not a proxy URL"),  # a second line in the environment file
    ],
)
def test_proxy_urls_that_are_refused(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        proxy.check_proxy_url(value)


def test_no_proxy_lists() -> None:
    assert (
        proxy.check_no_proxy("localhost, 127.0.0.1,.corp,10.0.0.0/8,")
        == "localhost,127.0.0.1,.corp,10.0.0.0/8"
    )
    assert proxy.check_no_proxy("*") == "*"
    for bad in ("a b", "x;reboot", "$(id)", " , "):
        with pytest.raises(ValueError):
            proxy.check_no_proxy(bad)


def test_settings_give_the_environment_in_both_spellings(package: str) -> None:
    llava = validate_fleet(fleet(package, http_proxy=URL, https_proxy=URL, no_proxy="localhost")).to_vars()[
        "ds-0"
    ]
    assert llava["proxy_env"] == {
        "http_proxy": URL, "HTTP_PROXY": URL, "https_proxy": URL, "HTTPS_PROXY": URL,
        "no_proxy": "localhost", "NO_PROXY": "localhost",
    }  # fmt: skip
    assert llava_of(package)["proxy_env"] == {}
    # the job gets it too (a hub id read at run time is downloaded by the job)
    env = render.job_environment(llava)
    assert env["https_proxy"] == URL and env["NO_PROXY"] == "localhost"


def test_a_bad_proxy_names_the_setting_and_never_shows_credentials(package: str) -> None:
    with pytest.raises(FleetValidationError) as info:
        validate_fleet(fleet(package, https_proxy="http://me:Pa55word@proxy:3128"))
    text = str(info.value)
    assert "https_proxy" in text and "credentials" in text
    assert "Pa55word" not in text


def test_environment_file_reads_the_same_in_sh() -> None:
    env = proxy.proxy_environment({"http_proxy": URL, "no_proxy": "localhost,.corp"})
    text = proxy.environment_file(env)
    assert text.splitlines() == sorted(text.splitlines()) and len(text.splitlines()) == 4
    script = 'set -a; . /dev/stdin; set +a; printf \'%s|%s\' "$HTTP_PROXY" "$no_proxy"'
    done = subprocess.run(["sh", "-c", script], input=text, capture_output=True, text=True, check=True)
    assert done.stdout == f"{URL}|localhost,.corp"
    assert proxy.environment_file({}) == ""


def test_a_proxy_change_waits_with_daemon_json_while_the_job_runs() -> None:
    running = {"ok": True, "running": True, "pid": 7, "step": 3, "total_steps": 9}
    env_file = "/etc/docker/llava-proxy.env"
    alone = job_guard.docker_restart_decision(running, "h", "c", {}, {}, other_files=[env_file])
    assert alone["wait"] and alone["keys"] == []
    assert alone["message"].startswith(
        f"h: the change of {env_file} and the restart of dockerd it needs wait"
    )
    assert f"{env_file} is left as it is" in alone["message"]
    both = job_guard.docker_restart_decision(running, "h", "c", {}, {"a": 1}, other_files=[env_file])
    assert "/etc/docker/daemon.json (a) and of /etc/docker/llava-proxy.env" in both["message"]
    assert "are left as they are" in both["message"]
    idle = {"ok": True, "running": False}
    assert not job_guard.docker_restart_decision(idle, "h", "c", {}, {}, other_files=[env_file])["wait"]


def test_every_proxy_write_waits_for_the_job_and_restarts_dockerd() -> None:
    tasks = tasks_of("roles/docker_engine/tasks/proxy.yml")
    writes = [t for t in tasks if "notify" in t]
    assert len(writes) == 3
    for task in writes:
        when = task["when"] if isinstance(task["when"], list) else [task["when"]]
        assert any("not docker_engine_restart.wait" in str(w) for w in when), task["name"]
        assert task["notify"] == "Restart Docker"
    package_tasks = [
        t
        for name in ("setup-Debian.yml", "setup-RedHat.yml")
        for t in walk(tasks_of(f"roles/docker_engine/tasks/{name}"))
        if "ansible.builtin.apt" in t or "ansible.builtin.dnf" in t
    ]
    assert len(package_tasks) == 3
    assert all(t.get("environment") == "{{ docker_engine_proxy_env }}" for t in package_tasks)


def test_build_sh_and_the_hub_download_get_the_proxy() -> None:
    build = next(t for t in tasks_of("roles/llava_workspace/tasks/build.yml") if "build.sh" in t["name"])
    assert build["community.docker.docker_container_exec"]["env"] == "{{ llava.proxy_env }}"
    hub = next(t for t in tasks_of("roles/llava_assets/tasks/local.yml") if t["name"].startswith("Download"))
    assert "combine(llava.proxy_env)" in hub["environment"]


def _start_script(tmp_path: Path, env_file: Path) -> Path:
    template = (ROLE / "templates/usr/local/sbin/llava-dockerd.j2").read_text()
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    environment.filters["quote"] = shlex.quote
    text = environment.from_string(template).render(
        ansible_managed="test",
        docker_engine_detached_log=str(tmp_path / "dockerd.log"),
        docker_engine_detached_pidfile=str(tmp_path / "docker.pid"),
        docker_engine_start_timeout=5,
        docker_engine_proxy_env_file=str(env_file),
    )
    script = tmp_path / "llava-dockerd"
    script.write_text(text)
    script.chmod(0o755)
    return script


def _start_detached(tmp_path: Path, env_file: Path) -> list[str]:
    """Run the start script with a stand-in dockerd that records its environment; that environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen, pid = tmp_path / "dockerd.env", tmp_path / "fake.pid"
    fakes = {
        "dockerd": f"echo $$ > {pid}\nenv > {seen}\nexec sleep 30",
        "docker": f"test -s {seen}",  # `docker info` answers once the daemon has started
        "pidof": "exit 1",  # not this machine's own dockerd
    }
    for tool, body in fakes.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    script = _start_script(tmp_path, env_file)
    try:
        done = subprocess.run(
            [str(script), "start"], capture_output=True, text=True,
            env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0 and done.stdout.strip() == "started", done
        return seen.read_text().splitlines()
    finally:
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], check=False)


def test_the_detached_dockerd_starts_with_the_proxy_environment(tmp_path: Path) -> None:
    env_file = tmp_path / "llava-proxy.env"
    env_file.write_text(proxy.environment_file(proxy.proxy_environment({"https_proxy": URL})))
    lines = _start_detached(tmp_path, env_file)
    assert f"HTTPS_PROXY={URL}" in lines and f"https_proxy={URL}" in lines


def test_the_detached_dockerd_starts_without_a_proxy_file(tmp_path: Path) -> None:
    lines = _start_detached(tmp_path, tmp_path / "missing.env")
    assert not [line for line in lines if "proxy" in line.lower()]
