"""Secrets never on a server's command line: the hub token reaches the download on stdin, the registry login
lives in a temporary DOCKER_CONFIG removed in `always`, and the preflight keeps only the Docker fields it
checks (other tenants' environments never reach the control node)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from ansible_collections.llava.devserver.plugins.filter import npu_check_bound

from llava_devserver import assets_manifest as am
from llava_devserver import assets_plan as ap
from role_tasks import tasks_of, walk

REPO = Path(__file__).resolve().parents[2]
TOKEN = "hf_TheSecretToken1234567890"


# --- hub token ---------------------------------------------------------------------------------------------


def test_hub_download_reads_the_token_from_stdin_and_hands_it_to_huggingface_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, Any] = {}

    def snapshot_download(**kwargs: Any) -> str:
        seen.update(kwargs)
        return kwargs["local_dir"]

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download)
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(TOKEN + "\n"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    argv = ap.hub_command(
        {"repo_id": "org/m", "revision": "main", "repo_type": "model", "host_dest": str(tmp_path / "m"),
         "is_dir": True},
        "/usr/local/lib/llava-devserver", f"{os.getuid()}:{os.getgid()}", token_set=True,
    )  # fmt: skip
    assert TOKEN not in " ".join(argv)
    assert am.main(argv[2:]) == 0
    assert seen["token"] == TOKEN and seen["repo_id"] == "org/m"
    assert TOKEN not in capsys.readouterr().out


def test_without_a_token_none_is_passed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=lambda **kw: seen.update(kw))
    )
    assert am.hub_download("org/m", "main", "model", str(tmp_path / "m"), None)["ok"]
    assert "token" not in seen
    assert am.read_token(io.StringIO("")) is None and am.read_token(io.StringIO(" t \n")) == "t"


def test_hub_task_sends_the_token_on_stdin_only() -> None:
    hub = next(
        t for t in tasks_of("roles/llava_assets/tasks/local.yml") if t["name"].startswith("Download the hub")
    )
    command = hub["ansible.builtin.command"]
    assert "hf_token" in command["stdin"] and hub["no_log"] is True
    assert "hf_token" not in hub["environment"]
    # the endpoint and the proxy only
    assert (
        hub["environment"]
        == "{{ llava.hf_endpoint | llava.devserver.llava_assets_hub_env | combine(llava.proxy_env) }}"
    )
    assert "HF_TOKEN" not in ap.hub_environment("https://hf-mirror.com")


# --- registry login ---------------------------------------------------------------------------------------


def test_registry_login_goes_to_a_temporary_docker_config_removed_in_always() -> None:
    tasks = tasks_of("roles/training_container/tasks/image-pull.yml")
    pull_block = next(t for t in tasks if "always" in t)
    inner = walk(pull_block["block"])
    login = next(t for t in inner if "community.docker.docker_login" in t)
    assert (
        login["community.docker.docker_login"]["config_path"]
        == "{{ training_container_login_dir.path }}/config.json"
    )
    assert login["no_log"] is True
    made = next(t for t in inner if "ansible.builtin.tempfile" in t)
    assert made["ansible.builtin.tempfile"]["path"] == "{{ training_container_docker_config_root }}"
    pull = next(t for t in inner if "community.docker.docker_image_pull" in t)
    assert "DOCKER_CONFIG" in pull["environment"]
    (cleanup,) = pull_block["always"]
    assert cleanup["ansible.builtin.file"] == {
        "path": "{{ training_container_login_dir.path }}",
        "state": "absent",
    }
    # nothing logs in or out of the default /root/.docker/config.json any more
    assert all(
        "config_path" in t["community.docker.docker_login"]
        for t in walk(tasks)
        if "community.docker.docker_login" in t
    )
    defaults = yaml.safe_load((REPO / "roles/training_container/defaults/main.yml").read_text())
    assert defaults["training_container_docker_config_root"].startswith("/run/")
    # leftovers of interrupted runs are removed before the next login
    stale = walk([tasks[0]])
    assert any("ansible.builtin.find" in t for t in stale) and any("ansible.builtin.file" in t for t in stale)


# --- Docker state in the preflight ------------------------------------------------------------------------


def _bound() -> ModuleType:
    return npu_check_bound


def test_reduced_container_lines_are_what_the_check_reads() -> None:
    bound = _bound()
    lines = "\n".join(
        json.dumps(entry)
        for entry in (
            {"name": "/other", "running": True, "devices": ["/dev/davinci3"], "visible": None},
            {"name": "/rt", "running": True, "devices": [], "visible": "ASCEND_VISIBLE_DEVICES=0-1"},
            {"name": "/llava-pretrain", "running": True, "devices": ["/dev/davinci0"], "visible": None},
        )
    )
    problems = bound.npu_check_bound_problems(lines, [0, 1, 3], "llava-pretrain")
    assert [p.split(" ", 2)[1] for p in problems] == ["3", "0", "1"]
    assert "'other'" in problems[0] and "ASCEND_VISIBLE_DEVICES=0-1" in problems[1]


def test_full_inspect_is_reduced_to_the_fields_the_check_uses() -> None:
    from llava_devserver.npu_devices import reduce_inspect

    entry = {
        "Name": "/tenant",
        "State": {"Running": True},
        "HostConfig": {"Devices": [{"PathOnHost": "/dev/davinci2", "PathInContainer": "/dev/davinci2"}]},
        "Config": {"Env": ["AWS_SECRET_ACCESS_KEY=hunter2", "ASCEND_VISIBLE_DEVICES=4"]},
    }
    reduced = reduce_inspect(entry)
    assert reduced == {
        "name": "tenant",
        "running": True,
        "devices": ["/dev/davinci2"],
        "visible": "ASCEND_VISIBLE_DEVICES=4",
    }
    assert "hunter2" not in json.dumps(reduced)


def _inspect_format() -> str:
    from llava_devserver.npu_devices import HOLDERS_FORMAT

    npu_probe = next(t for t in tasks_of("roles/npu_check/tasks/main.yml") if "probe.sh.j2" in str(t))
    container_probe = next(
        t
        for t in tasks_of("roles/training_container/tasks/checks.yml")
        if "ansible.builtin.shell" in t and "inspect" in t["ansible.builtin.shell"]
    )
    for task, script, variable in (
        (npu_probe, (REPO / "roles/npu_check/templates/probe.sh.j2").read_text(), "npu_check_inspect_format"),
        (container_probe, container_probe["ansible.builtin.shell"], "training_container_holders_format"),
    ):
        # an argument of the probe's `bash -c` ($0 there), shell-quoted: `environment:` values land unquoted
        # on a shell command line
        assert 'docker inspect --format "$0"\'' in script and f"{{{{ {variable} | quote }}}}" in script, (
            variable
        )
        assert "environment" not in task, variable
    checks = next(t for t in tasks_of("roles/training_container/tasks/checks.yml") if "vars" in t)
    assert (
        checks["vars"]["training_container_holders_format"]
        == "{{ None | llava.devserver.llava_docker_holders_format }}"
    )
    npu_vars = yaml.safe_load((REPO / "roles/npu_check/vars/main.yml").read_text())
    assert npu_vars["npu_check_inspect_format"] == "{{ None | llava.devserver.llava_docker_holders_format }}"
    return HOLDERS_FORMAT


def test_preflight_asks_docker_for_the_reduced_fields_only() -> None:
    template = _inspect_format()
    # only these fields are printed; the environment is scanned for one name and only that entry is printed
    assert "{{json .Config" not in template and "{{.Config" not in template
    assert template.count(".Config.Env") == 1 and "{{range .Config.Env}}" in template
    for field in (".Name", ".State.Running", "$d.PathOnHost", '"ASCEND_VISIBLE_DEVICES"'):
        assert field in template


def test_go_template_of_the_preflight_is_what_docker_would_print() -> None:
    """No Go template engine here (the fleet test runs the real one): with its actions replaced by sample
    values, the template's skeleton parses as the reduced object."""
    template = _inspect_format()
    devices = "{{range $i, $d := .HostConfig.Devices}}{{if $i}},{{end}}{{json $d.PathOnHost}}{{end}}"
    sample = (
        template.replace("{{json .Name}}", '"/x"')
        .replace("{{json .State.Running}}", "true")
        .replace(devices, '"/dev/davinci1"')
    )
    sample = sample.split('"visible":', 1)[0] + '"visible":null}'
    assert json.loads(sample) == {
        "name": "/x",
        "running": True,
        "devices": ["/dev/davinci1"],
        "visible": None,
    }


def test_manifest_helper_still_runs_under_python3_standalone(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-S", str(Path(am.__file__)), "hub-download", "--repo-id", "o/m",
         "--dest", str(tmp_path / "x"), "--token-stdin", "--owner", f"{os.getuid()}:{os.getgid()}"],
        input=TOKEN + "\n", capture_output=True, text=True, check=False, cwd=tmp_path,
        env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"},  # nothing listens: refused at once
    )  # fmt: skip
    # without huggingface_hub, hub_fetch.py (beside it) tries the hub: exit 1, and the token is in no output
    assert result.returncode == 1, result.stderr
    assert "GET http://127.0.0.1:9/api/models/o/m/revision/main" in result.stdout, result.stdout
    assert TOKEN not in result.stdout + result.stderr
