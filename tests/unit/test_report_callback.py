"""The `llava_report` callback, for real: ansible-playbook on local hosts and an unreachable one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
HF_LOG = Path(__file__).parents[1] / "fixtures" / "logs" / "hf_trainer.log"
SECRET = "s3cr3t-hub-token-4711"
HOSTS = ["node-ok", "node-fail", "node-secret", "node-gone", "node-late"]

INVENTORY = """\
[devservers]
node-ok ansible_connection=local
node-fail ansible_connection=local
node-secret ansible_connection=local hub_token={secret}
node-gone ansible_host=192.0.2.1 ansible_connection=ssh ansible_user=root ansible_timeout=2
node-late ansible_connection=local

[devservers:vars]
ansible_python_interpreter={python}
"""

PLAYBOOK = """\
- name: A run where hosts end differently
  hosts: devservers:!node-late
  gather_facts: false
  tasks:
    - name: Ping (node-gone is unreachable)
      ansible.builtin.ping:
    - name: A failure that a rescue handles
      when: inventory_hostname == 'node-ok'
      block:
        - name: Fail on purpose
          ansible.builtin.fail:
            msg: rescued failure
      rescue:
        - name: Recover
          ansible.builtin.debug:
            msg: recovered
    - name: Publish what the report shows
      ansible.builtin.set_fact:
        llava_report_npu: {{count: 8, chip: 910B3, healthy: 8, driver_version: 23.0.7}}
        llava_report_container: {{name: llava-train, state: running}}
        llava_report_accel: {{verdict: pass}}
        llava_report_job: {{state: finished, step: 20}}
        not_for_the_report: 1
      when: inventory_hostname == 'node-ok'
    - name: Fetch the job log of the rank that prints the loss
      ansible.builtin.fetch:
        src: {log}
        dest: "{{{{ lookup('ansible.builtin.env', 'LLAVA_RUN_DIR') }}}}/logs/{{{{ inventory_hostname }}}}/\\
          train.log"
        flat: true
      when: inventory_hostname == 'node-ok'
    - name: Probe the NPUs
      ansible.builtin.include_role:
        name: npu_probe
      when: inventory_hostname == 'node-fail'
    - name: Log in to the model hub
      ansible.builtin.fail:
        msg: "login refused for token {{{{ hub_token }}}}"
      no_log: true
      when: inventory_hostname == 'node-secret'
"""

VALIDATION_FAILS = """\
- name: Validate the inventory
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Validate the settings
      ansible.builtin.fail:
        msg: "FleetValidationError: node-ok: npu_devices: device 9 is out of range 0-7"
- name: Never reached
  hosts: devservers
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
"""


ROLE_TASKS = """\
- name: Query the NPUs
  ansible.builtin.fail:
    msg: "npu-smi info failed on {{ inventory_hostname }}: dcmi module initialize failed, ret -8005"
"""


def run_playbook(workdir: Path, playbook: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    role_tasks = workdir / "roles" / "npu_probe" / "tasks"
    role_tasks.mkdir(parents=True, exist_ok=True)
    (role_tasks / "main.yml").write_text(ROLE_TASKS)
    (workdir / "hosts.ini").write_text(INVENTORY.format(python=sys.executable, secret=SECRET))
    (workdir / "play.yml").write_text(playbook)
    env = {k: v for k, v in os.environ.items() if k != "LLAVA_RUN_DIR"}
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_CALLBACKS_ENABLED="llava.devserver.llava_report",
        ANSIBLE_FACT_CACHING="memory",  # keep the test's facts out of the repository's cache
        ANSIBLE_LOCAL_TEMP=str(workdir / ".ansible-tmp"),
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        **env_extra,
    )
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(workdir / "hosts.ini"), str(workdir / "play.yml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def by_host(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["host"]: entry for entry in report["hosts"]}


def table_lines(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("|")]


def test_report_of_a_run_with_ok_failed_secret_unreachable_and_unreached_hosts(tmp_path: Path) -> None:
    playbook = PLAYBOOK.format(log=HF_LOG)
    proc = run_playbook(tmp_path, playbook, {})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output  # hosts failed
    # (ansible-core 2.19's default stdout callback itself prints the msg of a failing no_log `fail`/`assert`
    # action; the report must not add to that, which is checked on its files below.)

    runs = tmp_path / "runs"
    run_dirs = [p for p in runs.iterdir() if p.name != "latest"]
    assert len(run_dirs) == 1, output
    run_dir = run_dirs[0]
    assert (runs / "latest").is_symlink() and (runs / "latest").resolve() == run_dir.resolve()
    assert f"Fleet report: {run_dir / 'report.md'}" in proc.stdout

    report = json.loads((run_dir / "report.json").read_text())
    assert [e["host"] for e in report["hosts"]] == [
        "node-ok",
        "node-fail",
        "node-secret",
        "node-gone",
        "node-late",
    ]
    assert report["result"] == "failed"
    assert report["playbook"] == "play.yml"
    hosts = by_host(report)

    ok = hosts["node-ok"]
    assert ok["status"] == "changed"  # the fetch changed something; the rescued failure does not count
    assert ok["failed_task"] is None and ok["remedy"] is None
    assert ok["npu"] == "8× 910B3, 8 OK" and ok["driver"] == "23.0.7"
    assert ok["container"] == "llava-train (running)" and ok["accel"] == "pass"
    assert ok["job"] == "finished" and ok["step"] == 20 and ok["last_loss"] == 2.28
    assert set(ok["facts"]) == {"npu", "container", "accel", "job"}
    assert ok["loss"]["log"] == "logs/node-ok/train.log"
    assert ok["loss"]["summary"]["steps"] == 20 and ok["loss"]["summary"]["nan_count"] == 1

    failed = hosts["node-fail"]
    assert failed["status"] == "failed"
    assert failed["failed_task"]["task"] == "Query the NPUs"
    assert failed["failed_task"]["role"] == "npu_probe"
    assert "-8005" in failed["failed_task"]["message"]
    assert failed["remedy"]["key"] == "npu_smi_8005"

    secret = hosts["node-secret"]
    assert secret["status"] == "failed"
    assert secret["failed_task"] == {
        "task": "Log in to the model hub",
        "role": None,
        "action": "ansible.builtin.fail",
        "message": "(output hidden: no_log)",
    }

    gone = hosts["node-gone"]
    assert gone["status"] == "unreachable" and gone["remedy"]["key"] == "unreachable"
    assert gone["failed_task"]["task"] == "Ping (node-gone is unreachable)"

    late = hosts["node-late"]
    assert late["status"] == "skipped" and late["reached"] is False
    assert late["remedy"]["key"] == "not_reached"

    markdown = (run_dir / "report.md").read_text()
    assert SECRET not in markdown and SECRET not in (run_dir / "report.json").read_text()
    rows = table_lines(markdown)
    assert len(rows) == 2 + 5
    assert markdown.count("| Host |") == 1
    assert rows[2].startswith("| node-ok | changed | 8× 910B3, 8 OK | 23.0.7 |")
    assert "| node-fail | failed |" in rows[3] and "| npu_probe : Query the NPUs |" in rows[3]
    assert "![Training loss](loss.png)" in markdown
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_run_dir_from_the_environment_and_a_run_stopped_at_validation(tmp_path: Path) -> None:
    run_dir = tmp_path / "chosen-by-cli"
    proc = run_playbook(tmp_path, VALIDATION_FAILS, {"LLAVA_RUN_DIR": str(run_dir)})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert f"Fleet report: {run_dir / 'report.md'}" in proc.stdout, output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "latest").exists()
    report = json.loads((run_dir / "report.json").read_text())
    hosts = by_host(report)
    # every devserver is listed although none was reached; the failing control-node play comes last
    assert list(hosts) == ["node-ok", "node-fail", "node-secret", "node-gone", "node-late", "localhost"]
    assert all(hosts[h]["status"] == "skipped" and not hosts[h]["reached"] for h in list(hosts)[:5])
    assert hosts["node-ok"]["note"] == (
        "not reached: the run stopped at localhost (Validate the settings). "
        "FleetValidationError: node-ok: npu_devices: device 9 is out of range 0-7"
    )
    assert hosts["node-fail"]["note"] == "not reached: the run stopped at localhost (Validate the settings)"
    assert hosts["node-ok"]["remedy"]["key"] == "validation"  # the validation error names it
    assert hosts["node-fail"]["remedy"]["key"] == "not_reached"
    assert hosts["localhost"]["status"] == "failed"
    assert hosts["localhost"]["remedy"]["key"] == "validation"
    assert report["loss_png"] is None and not (run_dir / "loss.png").exists()
    assert len(table_lines((run_dir / "report.md").read_text())) == 2 + 6


def test_callback_is_documented_for_ansible_doc() -> None:
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-doc"), "-t", "callback", "llava.devserver.llava_report"],
        cwd=REPO,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "LLAVA_RUN_DIR" in proc.stdout
