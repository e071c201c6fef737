"""Every piece of Python that Ansible sends to a server runs there on Python 3.7+ with the standard library.

The servers are not the control node: HCE 2.0 has Python 3.9, EulerOS 2.x 3.7, and ansible-core 2.19
manages 3.8 and newer, so code that uses a 3.8+-only construct (`from datetime import UTC`, the walrus,
f-string `=`, `str.removeprefix`, `list[int]` evaluated at runtime) fails there and nowhere in a Debian 12
fleet.
vermin (pinned in the dev extra) finds the minimum version of each file.

What is shipped, and its target (found from the roles, so a new helper cannot slip past):
- server helpers, Python 3.7, standard library only: the scripts run by `ansible.builtin.script`
  (`'NAME' | llava_pretrain_helper_path`: jobstate.py) and the files copied to servers and run with their
  python3 (`llava_assets_python_files`: assets_manifest.py, assets_verify.py);
- container code, Python 3.9 (the Ascend training image's Python; torch and friends are imported lazily):
  `'payloads.NAME' | llava_module_path` (src/llava_devserver/payloads/, copied into the training container);
- the simulated servers' own Python files (sim/files with a python shebang: npu-smi, npu-sim-sync), Python
  3.9: the hce2 profile's /usr/bin/python3 (debian12 has 3.11), and npu-smi also runs in the training
  container.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.llava.devserver.plugins.filter.accel_check import llava_module_path
from ansible_collections.llava.devserver.plugins.filter.assets import llava_assets_python_files
from ansible_collections.llava.devserver.plugins.filter.llava_pretrain import llava_pretrain_helper_path
from ansible_collections.llava.devserver.plugins.filter.workspace import llava_workspace_unpack_helper

from llava_devserver.sim import image as sim_image

REPO = Path(__file__).resolve().parents[2]
SIM_FILES = REPO / "src" / "llava_devserver" / "sim" / "files"
SERVER_TARGET = "3.7"
CONTAINER_TARGET = "3.9"
SIM_TARGET = "3.9"
# Constructs vermin reports only when asked to (they are legal in older Pythons' grammar or ambiguous).
# (Not union-types: it also flags `X | None` in annotations, which the future import keeps unevaluated.)
VERMIN_FEATURES = ("fstring-self-doc",)


def _yaml_texts() -> str:
    return "\n".join(
        p.read_text() for p in sorted([*REPO.glob("roles/**/*.yml"), *REPO.glob("playbooks/*.yml")])
    )


def _named(filter_name: str) -> set[str]:
    return set(re.findall(r"'([\w.]+)'\s*\|\s*(?:llava\.devserver\.)?" + filter_name + r"\b", _yaml_texts()))


def _is_python_script(path: Path) -> bool:
    first = path.read_bytes().split(b"\n", 1)[0]
    return first.startswith(b"#!") and b"python" in first


def shipped_files() -> dict[Path, tuple[str, bool]]:
    """Shipped Python file -> (target version, standard library only)."""
    files: dict[Path, tuple[str, bool]] = {}
    for name in _named("llava_pretrain_helper_path"):
        files[Path(llava_pretrain_helper_path(name))] = (SERVER_TARGET, True)
    for path in llava_assets_python_files().values():
        files[Path(path)] = (SERVER_TARGET, True)
    files[Path(llava_workspace_unpack_helper(None))] = (SERVER_TARGET, True)  # package_unpack.py
    for name in _named("llava_module_path"):
        files[Path(llava_module_path(name))] = (CONTAINER_TARGET, False)
    for path in (REPO / "src/llava_devserver/payloads").glob("*.py"):  # the container's files, all of them
        files[path] = (CONTAINER_TARGET, False)
    names = set(sim_image.SERVER_FILES)
    for profile in sim_image.PROFILES.values():
        names |= set(profile.files)
    for name in sorted(names):
        if _is_python_script(SIM_FILES / name):
            files[SIM_FILES / name] = (SIM_TARGET, True)
    # Anything else a role could send: its files/, library/, module_utils/ Python.
    for kind in ("files", "library", "module_utils"):
        for path in REPO.glob(f"roles/*/{kind}/**/*"):
            if path.is_file() and (path.suffix == ".py" or _is_python_script(path)):
                files[path] = (SERVER_TARGET, True)
    return files


def vermin_violations(path: Path, target: str) -> str:
    """vermin's report where `path` needs a newer Python than `target`, else ''."""
    source = path.read_text()
    evaluated = "from __future__ import annotations" not in source  # then annotations run at import
    command = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", f"-t={target}-"]
    command += ["--no-tips", "--violations", "--no-parse-comments"]
    command += [arg for feature in VERMIN_FEATURES for arg in ("--feature", feature)]
    command += ["--eval-annotations"] if evaluated else []
    done = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120, check=False)
    return "" if done.returncode == 0 else (done.stdout + done.stderr).strip()


def non_stdlib_imports(path: Path, siblings: set[str]) -> list[str]:
    """Module-level imports of anything but the standard library and the files shipped beside it (an import
    inside `try: ... except ImportError` is a fallback, and one inside a function an optional feature)."""
    tree = ast.parse(path.read_text(), str(path))
    allowed = set(sys.stdlib_module_names) | siblings | {"__future__"}
    found: list[str] = []

    def visit(nodes: list[ast.stmt], guarded: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Try):
                catches = {getattr(h.type, "id", "") for h in node.handlers if h.type is not None} | {
                    getattr(e, "id", "")
                    for h in node.handlers
                    if isinstance(h.type, ast.Tuple)
                    for e in h.type.elts
                }
                fallback = bool(catches & {"ImportError", "ModuleNotFoundError"})
                visit(node.body, guarded or fallback)
                for handler in node.handlers:
                    visit(handler.body, guarded)
                visit(node.orelse + node.finalbody, guarded)
            elif isinstance(node, ast.If):
                visit(node.body + node.orelse, guarded)
            elif isinstance(node, ast.Import | ast.ImportFrom) and not guarded:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                relative = isinstance(node, ast.ImportFrom) and node.level > 0
                found.extend(n for n in names if n.split(".")[0] not in allowed and not relative)

    visit(tree.body, False)
    return found


def test_the_shipped_files_are_found() -> None:
    files = {path.name: target for path, (target, _) in shipped_files().items()}
    assert files["jobstate.py"] == SERVER_TARGET
    assert files["assets_manifest.py"] == files["assets_verify.py"] == SERVER_TARGET
    assert files["accel_check.py"] == CONTAINER_TARGET
    assert files["npu-smi"] == files["npu-sim-sync"] == SIM_TARGET
    assert "npu-sim-boot" not in files  # a bash script


def test_every_server_script_is_one_this_test_knows() -> None:
    """ansible.builtin.script runs only the job and the package helpers; a new script must be added to
    shipped_files()."""
    commands = re.findall(r"ansible\.builtin\.script:\s*\n\s*cmd:\s*>-\s*\n\s*(\S.*)", _yaml_texts())
    assert commands, "no ansible.builtin.script task found: has the job helper moved?"
    helpers = {command.split(" }}", 1)[0] + " }}" for command in commands}
    assert helpers == {"{{ llava_pretrain_helper }}", "{{ llava_workspace_helper }}"}, commands
    role_vars = (REPO / "roles/llava_pretrain/vars/main.yml").read_text()
    assert "'jobstate' | llava.devserver.llava_pretrain_helper_path" in role_vars
    workspace_vars = (REPO / "roles/llava_workspace/vars/main.yml").read_text()
    assert "None | llava.devserver.llava_workspace_unpack_helper" in workspace_vars


@pytest.mark.parametrize("path", sorted(shipped_files()), ids=lambda p: p.name)
def test_runs_on_the_oldest_python_of_its_target(path: Path) -> None:
    target, _ = shipped_files()[path]
    assert vermin_violations(path, target) == "", f"{path.name} (target Python {target}+)"


@pytest.mark.parametrize(
    "path", sorted(p for p, (_, stdlib) in shipped_files().items() if stdlib), ids=lambda p: p.name
)
def test_uses_only_the_standard_library(path: Path) -> None:
    siblings = {p.stem for p in shipped_files() if p.parent == path.parent}
    assert non_stdlib_imports(path, siblings) == []


@pytest.mark.parametrize(
    "snippet, construct",
    [
        ("from datetime import UTC\n", "datetime.UTC"),
        ("import sys\nif (n := len(sys.argv)) > 1:\n    pass\n", "named expressions"),
        ("x = 1\nprint(f'{x=}')\n", "self-documenting f-strings"),
        ("print('v1.0'.removeprefix('v'))\n", "removeprefix"),
        ("def f(x: list[int]) -> None:\n    pass\n", "generic type annotation"),
        ("import math\nprint(math.prod([1, 2]))\n", "math.prod"),
    ],
)
def test_the_check_fails_on_a_newer_construct(tmp_path: Path, snippet: str, construct: str) -> None:
    sample = tmp_path / "helper.py"
    sample.write_text(snippet)
    report = vermin_violations(sample, SERVER_TARGET)
    assert construct in report, report


def test_annotations_are_free_under_the_future_import(tmp_path: Path) -> None:
    sample = tmp_path / "helper.py"
    sample.write_text(
        "from __future__ import annotations\n\ndef f(x: list[int] | None) -> dict[str, int]:\n    return {}\n"
    )
    assert vermin_violations(sample, SERVER_TARGET) == ""


def test_a_third_party_import_is_found(tmp_path: Path) -> None:
    sample = tmp_path / "helper.py"
    sample.write_text(
        "import json\ntry:\n    import yaml\nexcept ImportError:\n    yaml = None\nimport requests\n"
    )
    assert non_stdlib_imports(sample, set()) == ["requests"]
