"""The CLI speaks Ansible: vault secrets each way Ansible takes them (a real terminal for -J), -v/--forks
passed through, the default inventory, --json everywhere, --version, completion, a closed pipe, --retry."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pexpect
import pytest

from llava_devserver import ansible_cli
from llava_devserver.cli import build_parser, main
from llava_devserver.commands.fleet import hosts_to_retry
from llava_devserver.completion import command_table, completion_script
from test_runner import PLAYBOOK, local_inventory, write_playbook

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "vault-pw-7"
SECRET = "swr-password-never-printed"


def vaulted_inventory(tmp_path: Path, hosts: tuple[str, ...] = ("node-a", "node-b")) -> Path:
    """A valid local inventory whose registry password is vault-encrypted with PASSWORD."""
    from ansible.parsing.vault import VaultLib, VaultSecret

    inventory = local_inventory(tmp_path, hosts)
    ciphertext = VaultLib([("default", VaultSecret(PASSWORD.encode()))]).encrypt(SECRET).decode()
    (tmp_path / "group_vars" / "devservers.yml").write_text(
        "container_registry_password: !vault |\n" + textwrap.indent(ciphertext, "  ") + "\n"
    )
    (tmp_path / "vault-pass").write_text(PASSWORD + "\n")
    return inventory


def cli(*argv: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own (Ansible reads its config and environment once, at import)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "llava_devserver.cli", *argv],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=120,
    )


# ------------------------------------------------------------------------------------------------ vault


def test_vaulted_inventory_needs_a_password_and_the_error_names_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inventory = vaulted_inventory(tmp_path)
    assert main(["validate", "-i", str(inventory)]) == 1
    captured = capsys.readouterr()
    assert "container_registry_password: is vault-encrypted" in captured.out
    assert "--ask-vault-pass" in captured.err and "--vault-id" in captured.err
    assert "ANSIBLE_VAULT_PASSWORD_FILE" in captured.err
    assert main(["validate", "-i", str(inventory), "--json"]) == 1
    assert "--vault-password-file" in json.loads(capsys.readouterr().out)["hint"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--vault-password-file", "{dir}/vault-pass"],
        ["--vault-pass-file", "{dir}/vault-pass"],
        ["--vault-id", "prod@{dir}/vault-pass"],
        ["--vault-id", "{dir}/vault-pass"],
    ],
)
def test_validate_with_password_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    inventory = vaulted_inventory(tmp_path)
    argv = [flag.format(dir=tmp_path) for flag in flags]
    assert main(["validate", "-i", str(inventory), *argv, "--show"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("valid: 2 server(s)") and SECRET not in out


def test_wrong_and_missing_password_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = vaulted_inventory(tmp_path)
    (tmp_path / "wrong").write_text("not-it\n")
    assert main(["validate", "-i", str(inventory), "--vault-password-file", str(tmp_path / "wrong")]) == 1
    assert "could not be decrypted with the given vault password" in capsys.readouterr().err
    assert main(["validate", "-i", str(inventory), "--vault-password-file", str(tmp_path / "nope")]) == 2
    assert "vault password:" in capsys.readouterr().err


def test_ansible_vault_password_file_environment(tmp_path: Path) -> None:
    inventory = vaulted_inventory(tmp_path)
    done = cli(
        "validate", "-i", str(inventory), env={"ANSIBLE_VAULT_PASSWORD_FILE": str(tmp_path / "vault-pass")}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("valid: 2 server(s)")


def test_ansible_cfg_vault_password_file(tmp_path: Path) -> None:
    """vault_password_file of the project's ansible.cfg (the one playbook runs use) counts."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "site.yml").write_text("---\n")
    (project / "ansible.cfg").write_text(f"[defaults]\nvault_password_file = {tmp_path / 'vault-pass'}\n")
    inventory = vaulted_inventory(tmp_path)
    done = cli("validate", "-i", str(inventory), env={"LLAVA_DEVSERVER_HOME": str(project)})
    assert done.returncode == 0, done.stderr
    without = cli("validate", "-i", str(inventory), env={"LLAVA_DEVSERVER_HOME": str(ROOT)})
    assert without.returncode == 1 and "--ask-vault-pass" in without.stderr


def _spawn(argv: list[str], cwd: Path) -> pexpect.spawn:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return pexpect.spawn(
        sys.executable,
        ["-m", "llava_devserver.cli", *argv],
        cwd=str(cwd),
        env=env,
        encoding="utf-8",
        timeout=120,
    )


def test_ask_vault_pass_in_a_terminal(tmp_path: Path) -> None:
    inventory = vaulted_inventory(tmp_path)
    child = _spawn(["validate", "-i", str(inventory), "-J"], tmp_path)
    child.expect(r"Vault password: ")
    child.sendline(PASSWORD)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "valid: 2 server(s)" in child.before and PASSWORD not in child.before


def test_up_asks_once_and_ansible_playbook_gets_the_password(tmp_path: Path) -> None:
    """The password typed once reaches ansible-playbook's own --ask-vault-pass prompt (ansible-runner)."""
    inventory = vaulted_inventory(tmp_path)
    playbook = write_playbook(
        tmp_path,
        """\
        - name: Read the vaulted value
          hosts: devservers
          gather_facts: false
          tasks:
            - name: Write its length
              ansible.builtin.copy:
                dest: "{{ out }}/{{ inventory_hostname }}.len"
                content: "{{ container_registry_password | length }}"
                mode: "0600"
        """,
    )
    argv = ["up", "-i", str(inventory), "--playbook", str(playbook), "--run-dir", str(tmp_path / "run")]
    child = _spawn([*argv, "--plain", "--ask-vault-pass", "-e", f"out={tmp_path}"], tmp_path)
    child.expect(r"Vault password: ")
    child.sendline(PASSWORD)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert child.before.count("Vault password") == 0  # asked once, before the run
    assert (tmp_path / "node-a.len").read_text() == str(len(SECRET))
    log = (tmp_path / "run" / "ansible.log").read_text()
    assert PASSWORD not in log and SECRET not in log


def test_vault_passwords_passed_to_ansible_playbook(tmp_path: Path) -> None:
    args = argparse.Namespace(
        verbosity=3,
        forks=7,
        vault_ids=["prod@vault-pass", "dev@prompt"],
        vault_password_files=["vault-pass"],
        ask_vault_pass=True,
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        argv = ansible_cli.playbook_args(args)
    finally:
        os.chdir(cwd)
    assert argv == [
        "-vvv",
        "--forks",
        "7",
        "--vault-id",
        f"prod@{tmp_path.resolve()}/vault-pass",
        "--vault-id",
        "dev@prompt",
        "--vault-password-file",
        f"{tmp_path.resolve()}/vault-pass",
        "--ask-vault-pass",
    ]


# ------------------------------------------------------------------------------------------- inventory


def test_default_inventory_from_ansible_inventory(tmp_path: Path) -> None:
    inventory = vaulted_inventory(tmp_path)
    done = cli(
        "validate",
        "--vault-password-file",
        str(tmp_path / "vault-pass"),
        env={"ANSIBLE_INVENTORY": str(inventory)},
    )
    assert done.returncode == 0, done.stderr
    missing = cli("validate", env={"ANSIBLE_INVENTORY": str(tmp_path / "nope.ini")})
    assert missing.returncode == 2
    assert "no inventory: give -i INVENTORY" in missing.stderr and "ANSIBLE_INVENTORY" in missing.stderr


def test_default_inventory_is_ansible_cfgs(capsys: pytest.CaptureFixture[str]) -> None:
    """Without -i: ansible.cfg's `inventory` (the project's example, whose package path is a placeholder)."""
    assert main(["validate", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [e["setting"] for e in report["errors"]] == ["ascendcloud_package"]
    assert "inventory/group_vars/all.yml" in report["errors"][0]["origin"]


# ------------------------------------------------------------------------------------------------- json


# Leaf commands that print data, and those that print none (a stream, progress, or nothing): a new command
# must be put in one of the two.
DATA_COMMANDS = {
    "validate", "schema", "render", "npu-smi parse", "loss", "sim status", "sim requests",
    "up", "plan", "status", "down", "report", "hccn parse",
}  # fmt: skip
NO_DATA_COMMANDS = {"logs", "sim up", "sim fault", "sim images", "sim down"}


def test_every_data_printing_command_accepts_json() -> None:
    leaves = {}
    for path, words, _ in command_table(build_parser()):
        name = path.removeprefix("llava-devserver").strip()
        children = {p for p, _, _ in command_table(build_parser()) if p.startswith(path + " ")}
        if name and not children:
            leaves[name] = words
    assert set(leaves) == DATA_COMMANDS | NO_DATA_COMMANDS
    assert {name for name, words in leaves.items() if "--json" in words} >= DATA_COMMANDS


def test_format_json_is_a_deprecated_alias(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = vaulted_inventory(tmp_path)
    argv = ["validate", "-i", str(inventory), "--vault-password-file", str(tmp_path / "vault-pass")]
    assert main([*argv, "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["valid"] is True and "--format is deprecated" in captured.err


def test_up_and_plan_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = local_inventory(tmp_path)
    playbook = write_playbook(tmp_path, PLAYBOOK)
    base = ["-i", str(inventory), "--playbook", str(playbook), "-e", f"out={tmp_path}", "--json"]
    assert main(["plan", *base, "--run-dir", str(tmp_path / "plan")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["check"] is True
    assert plan["hosts"]["node-a"]["plan"] == "changes"
    assert plan["hosts"]["node-a"]["changes"] == ["Record the run dir"]
    assert main(["up", *base, "--run-dir", str(tmp_path / "up"), "-e", "break_b=true"]) == 1
    up = json.loads(capsys.readouterr().out)
    assert up["rc"] == 1 and up["log"] == str(tmp_path / "up" / "ansible.log")
    assert up["hosts"]["node-a"]["changed"] == 1 and up["hosts"]["node-a"]["failures"] == []
    assert up["hosts"]["node-b"]["failed"] == 1
    assert up["hosts"]["node-b"]["failures"] == ["Fail on node-b: node-b: card 3 is broken; replace it"]


# ------------------------------------------------------------------------------------------------ retry


def test_hosts_to_retry() -> None:
    report = {
        "hosts": [
            {"host": "a", "status": "ok"},
            {"host": "b", "status": "failed"},
            {"host": "c", "status": "unreachable"},
            {"host": "d", "status": "changed"},
        ]
    }
    assert hosts_to_retry(report) == ["b", "c"]


def test_up_retry_reruns_only_the_failed_servers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inventory = local_inventory(tmp_path, ("node-a", "node-b", "node-c"))
    playbook = write_playbook(tmp_path, PLAYBOOK)
    last = tmp_path / "runs" / "20260101-000000"
    last.mkdir(parents=True)
    statuses = {"node-a": "ok", "node-b": "failed", "node-c": "unreachable"}
    report = {"hosts": [{"host": h, "status": s} for h, s in statuses.items()]}
    (last / "report.json").write_text(json.dumps(report))
    argv = ["up", "-i", str(inventory), "--playbook", str(playbook), "-e", f"out={tmp_path}"]
    assert main([*argv, "--run-dir", str(tmp_path / "retry"), "--retry", str(last)]) == 0
    assert "retrying 2 server(s)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("*.run_dir")) == ["node-b.run_dir", "node-c.run_dir"]
    assert main([*argv, "--retry", str(last), "--limit", "node-b"]) == 2
    assert "drop --limit" in capsys.readouterr().err
    (last / "report.json").write_text(json.dumps({"hosts": [{"host": "node-a", "status": "ok"}]}))
    assert main([*argv, "--retry", str(last)]) == 0
    assert "nothing to retry" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- version, shell, pipe


def test_version_names_ansible_core(capsys: pytest.CaptureFixture[str]) -> None:
    from ansible.release import __version__ as ansible_core

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert f"(ansible-core {ansible_core}," in capsys.readouterr().out


def _complete(script: Path, *words: str, cwd: Path = ROOT) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _llava_devserver; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, cwd=cwd, check=True)
    return done.stdout.split()


def test_bash_completion(tmp_path: Path) -> None:
    script = tmp_path / "completion.bash"
    script.write_text(completion_script(build_parser(), "bash"))
    assert _complete(script, "llava-devserver", "sim", "") == [
        "up",
        "status",
        "requests",
        "fault",
        "images",
        "down",
        "-h",
        "--help",
    ]
    assert _complete(script, "llava-devserver", "up", "--re") == ["--retry"]
    assert "--ask-vault-pass" in _complete(script, "llava-devserver", "-v", "validate", "--ask")
    (tmp_path / "devserver.ini").write_text("")
    assert _complete(script, "llava-devserver", "plan", "-i", "dev", cwd=tmp_path) == ["devserver.ini"]


def test_closed_pipe_ends_quietly() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # The reader is gone before the first byte is written: every write fails (EPIPE).
    process = subprocess.Popen(
        [sys.executable, "-m", "llava_devserver.cli", "schema"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert err == ""
    # And as a user types it.
    done = subprocess.run(
        f"{sys.executable} -m llava_devserver.cli schema | head -1",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.stdout == "{\n" and "Traceback" not in done.stderr
