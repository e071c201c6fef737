"""The launch-script renderer: golden files, shell validity, quoting, errors, contract with the config.

Regenerate the golden files after an intended template change with
`UPDATE_GOLDEN=1 pytest tests/unit/test_render.py` and review the diff.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes
import pytest

from llava_devserver import config, inventory, render
from llava_devserver.cli import main
from llava_devserver.render import RenderError, render_job

GOLDEN = Path(__file__).parents[1] / "golden" / "render"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
SCRIPT = "scripts/v1_5/pretrain_new.sh"
ZERO2 = "scripts/zero2.json"
COMMIT = "5d8f1760c08b7dfba3ae97b71cbd4c6f17d12dbd"
LLAVA_DIR = f"/home/ma-user/ws/multimodal_algorithm/LLAVA/llava-train/{COMMIT}/LLaVA"


def llava_vars(**overrides: Any) -> dict[str, Any]:
    """A llava dict shaped like HostSettings.to_vars() (Contract 1), one 8-card server by default."""
    devices = overrides.pop("npu_devices", list(range(8)))
    nnodes = overrides.get("nnodes", 1)
    base: dict[str, Any] = {
        "host": "devserver-1",
        "ansible_host": "192.168.0.11",
        "npu_count": 8,
        "npu_devices": devices,
        "npu_driver_version": "23.0.5",
        "work_dir": "/data/llava-devserver",
        "container_work_dir": "/home/ma-user/ws",
        "container_name": "llava-pretrain",
        "container_image": "llava-train:latest",
        "container_image_archive": None,
        "container_shm_size": "32g",
        "ascendcloud_package": "/srv/AscendCloud-6.3.906-20240701.zip",
        "llava_train_commit": COMMIT,
        "llava_dir": LLAVA_DIR,
        "model_name_or_path": f"{LLAVA_DIR}/models/vicuna-13b-v1.5",
        "vision_tower": "openai/clip-vit-large-patch14-336",
        "data_path": f"{LLAVA_DIR}/playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
        "image_folder": f"{LLAVA_DIR}/playground/data/LLaVA-Pretrain/images",
        "output_dir": f"{LLAVA_DIR}/checkpoints/llava-v1.5-13b-pretrain",
        "per_device_train_batch_size": 32,
        "gradient_accumulation_steps": 1,
        "global_batch_size": 256,
        "learning_rate": 1e-3,
        "num_train_epochs": 1.0,
        "max_steps": -1,
        "save_steps": 24000,
        "model_max_length": 2048,
        "dataloader_num_workers": 4,
        "launcher": "torchrun",
        "master_addr": "192.168.0.11",
        "master_port": 29500,
        "node_rank": 0,
        "nnodes": nnodes,
        "nproc_per_node": len(devices),
        "world_size": nnodes * len(devices),
        "train_env": {"HCCL_CONNECT_TIMEOUT": "1200", "TASK_QUEUE_ENABLE": "1", "CPU_AFFINITY_CONF": "1"},
        "cann_set_env": "/usr/local/Ascend/ascend-toolkit/set_env.sh",
        "metadata_guard": True,
    }
    base.update(overrides)
    return base


def two_servers(launcher: str, node_rank: int, **overrides: Any) -> dict[str, Any]:
    """Node `node_rank` of two servers that each give cards 4-7 to the container (global batch 256)."""
    return llava_vars(
        host=f"devserver-{node_rank + 1}",
        ansible_host=f"192.168.0.{11 + node_rank}",
        npu_devices=[4, 5, 6, 7],
        gradient_accumulation_steps=2,
        launcher=launcher,
        nnodes=2,
        node_rank=node_rank,
        **overrides,
    )


NIC = {"HCCL_CONNECT_TIMEOUT": "1800", "HCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0"}
CASES: dict[str, dict[str, Any]] = {
    "one-server-torchrun": llava_vars(),
    "one-server-deepspeed": llava_vars(launcher="deepspeed", max_steps=50, save_steps=20),
    "two-servers-torchrun-node0": two_servers("torchrun", 0, train_env=NIC),
    "two-servers-torchrun-node1": two_servers("torchrun", 1, train_env=NIC),
    "two-servers-deepspeed-node0": two_servers("deepspeed", 0),
    "two-servers-deepspeed-node1": two_servers("deepspeed", 1),
}


def check_golden(path: Path, content: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    assert path.is_file(), f"{path} missing: run UPDATE_GOLDEN=1 pytest {__file__}"
    assert content == path.read_text(), f"rendered output differs from {path} (UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("case", CASES)
def test_script_matches_golden(case: str) -> None:
    check_golden(GOLDEN / case / "pretrain_new.sh", render_job(CASES[case])[SCRIPT])


def test_zero2_matches_golden_and_upstream_settings() -> None:
    content = render_job(CASES["one-server-torchrun"])[ZERO2]
    check_golden(GOLDEN / "zero2.json", content)
    config = json.loads(content)
    # LLaVA's scripts/zero2.json: everything batch- and precision-related is left to the HF Trainer.
    assert config["zero_optimization"] == {
        "stage": 2,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "sub_group_size": 1e9,
        "reduce_bucket_size": "auto",
    }
    assert config["bf16"] == {"enabled": "auto"}
    assert config["fp16"]["enabled"] == "auto"
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps"):
        assert config[key] == "auto"


def test_job_files_are_the_contract_paths() -> None:
    assert set(render_job(llava_vars())) == {SCRIPT, ZERO2}


@pytest.mark.parametrize("case", CASES)
def test_script_passes_bash_n_and_shellcheck(case: str, tmp_path: Path) -> None:
    script = tmp_path / "pretrain_new.sh"
    script.write_text(render_job(CASES[case])[SCRIPT])
    subprocess.run(["bash", "-n", str(script)], check=True)
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: run scripts/ensure-host-tools.sh"
    result = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_rendering_is_deterministic_and_env_sorted() -> None:
    forward = llava_vars(train_env={"ZZZ": "1", "AAA": "2"})
    backward = llava_vars(train_env={"AAA": "2", "ZZZ": "1"})
    assert render_job(forward) == render_job(backward)
    exports = [line for line in render_job(forward)[SCRIPT].splitlines() if line.startswith("export ")]
    assert exports == sorted(exports)
    assert "export AAA=2" in exports and "export ZZZ=1" in exports


def test_visible_devices_are_logical_ids_and_train_env_overrides() -> None:
    env = render.job_environment(two_servers("torchrun", 0))
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3"  # host cards 4-7 are 0-3 inside the container
    assert env["HCCL_CONNECT_TIMEOUT"] == "1200"
    overridden = render.job_environment(
        llava_vars(train_env={"ASCEND_RT_VISIBLE_DEVICES": "0,1", "HCCL_CONNECT_TIMEOUT": "3600"})
    )
    assert overridden["ASCEND_RT_VISIBLE_DEVICES"] == "0,1"
    assert overridden["HCCL_CONNECT_TIMEOUT"] == "3600"
    assert overridden["TASK_QUEUE_ENABLE"] == "1"  # defaults survive a train_env without them


def test_hf_endpoint_is_exported_when_set() -> None:
    script = render_job(llava_vars(hf_endpoint="https://hf-mirror.com"))[SCRIPT]
    assert "export HF_ENDPOINT=https://hf-mirror.com\n" in script
    assert "HF_ENDPOINT" not in render_job(llava_vars(hf_endpoint=None))[SCRIPT]


def test_multi_node_deepspeed_world_info() -> None:
    plan = render.launch_plan(two_servers("deepspeed", 1))
    assert plan["mode"] == "deepspeed-launch"
    world = json.loads(base64.urlsafe_b64decode(plan["world_info"]))
    assert list(world) == ["node0", "node1"]  # order = node rank, as deepspeed.launcher.launch reads it
    assert world["node1"] == [0, 1, 2, 3]
    assert plan["master_addr"] == "192.168.0.11"


def test_single_node_uses_loopback_as_master() -> None:
    assert render.launch_plan(llava_vars(master_addr="203.0.113.7"))["master_addr"] == "127.0.0.1"


def test_max_steps_only_when_set() -> None:
    assert "--max_steps" not in render_job(llava_vars(max_steps=-1))[SCRIPT]
    assert "  --max_steps 0 \\\n" in render_job(llava_vars(max_steps=0))[SCRIPT]


# ------------------------------------------------------------------------------------------ errors


def test_missing_setting_is_named() -> None:
    settings = llava_vars(host="devserver-7")
    del settings["vision_tower"]
    del settings["master_port"]
    with pytest.raises(RenderError, match=r"devserver-7: .*master_port, vision_tower"):
        render_job(settings)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"launcher": "mpirun"}, r"launcher: must be one of deepspeed, torchrun"),
        ({"node_rank": 2, "nnodes": 2}, r"node_rank: 2 is outside 0..1"),
        ({"master_port": "29500"}, r"master_port: expected int"),
        ({"per_device_train_batch_size": True}, r"per_device_train_batch_size: expected int"),
        ({"train_env": {"BAD-NAME": "1"}}, r"train_env.BAD-NAME: not a valid environment variable name"),
        ({"train_env": {"X": ["a"]}}, r"train_env.X: expected a string or number"),
    ],
)
def test_bad_setting_is_named(override: dict[str, Any], pattern: str) -> None:
    with pytest.raises(RenderError, match=pattern):
        render_job(llava_vars(**override))


def test_environment_is_strict() -> None:
    env = render.environment()
    assert env.undefined is jinja2.StrictUndefined
    with pytest.raises(jinja2.UndefinedError, match="no_such_setting"):
        env.from_string("{{ llava.no_such_setting }}").render(llava={})


def test_every_setting_the_templates_read_is_checked_first() -> None:
    """So a missing setting is reported by name before Jinja would stop on it."""
    env = render.environment()
    assert env.loader is not None
    used: set[str] = set()
    for name in render.JOB_FILES.values():
        source = env.loader.get_source(env, name)[0]
        for node in env.parse(source).find_all(jinja2.nodes.Getattr):
            if isinstance(node.node, jinja2.nodes.Name) and node.node.name == "llava":
                used.add(node.attr)
    assert used, "the template reads no llava.* setting?"
    assert used <= set(render.REQUIRED_SETTINGS), used - set(render.REQUIRED_SETTINGS)


def test_templates_folder_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in render.JOB_FILES.values():
        (tmp_path / name).write_text("{}\n" if name.endswith(".json.j2") else "echo {{ llava.host }}\n")
    monkeypatch.setenv("LLAVA_DEVSERVER_TEMPLATES", str(tmp_path))
    assert render.template_dirs()[0] == tmp_path
    assert render_job(llava_vars(host="h9"))[SCRIPT] == "echo h9\n"


# ------------------------------------------------------------------------- running the script


STUB = """#!/bin/bash
# Records how it was called: argv (NUL-separated), working directory and a few variables.
printf '%s\\0' "$(basename "$0")" "$@" > "$STUB_OUT/argv"
pwd > "$STUB_OUT/cwd"
env -0 > "$STUB_OUT/env"
"""


def run_with_stub_launchers(
    settings: dict[str, Any], tmp_path: Path
) -> tuple[list[str], str, dict[str, str]]:
    """Run the rendered script with torchrun/deepspeed/python3 replaced by a recorder."""
    bin_dir = tmp_path / "bin"
    out = tmp_path / "out"
    bin_dir.mkdir()
    out.mkdir()
    for name in ("torchrun", "deepspeed", "python3"):
        stub = bin_dir / name
        stub.write_text(STUB)
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    script = tmp_path / "pretrain_new.sh"
    script.write_text(render_job(settings)[SCRIPT])
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_OUT": str(out), "HOME": str(tmp_path)}
    subprocess.run(["bash", str(script)], check=True, env=env, capture_output=True, text=True)
    argv = (out / "argv").read_text().split("\0")[:-1]
    env_out = dict(item.split("=", 1) for item in (out / "env").read_text().split("\0") if "=" in item)
    return argv, (out / "cwd").read_text().strip(), env_out


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
@pytest.mark.parametrize("nnodes", [1, 2])
def test_paths_with_spaces_and_quotes_reach_the_launcher_intact(
    tmp_path: Path, launcher: str, nnodes: int
) -> None:
    llava_dir = tmp_path / "work dir" / "LLa'VA $HOME"
    llava_dir.mkdir(parents=True)
    set_env = tmp_path / "set env.sh"
    # Like CANN's set_env.sh: appends to a variable that may be unset (needs `set +u` around it).
    set_env.write_text("export LD_LIBRARY_PATH=/cann/lib64:${LD_LIBRARY_PATH}\nexport CANN_LOADED=yes\n")
    data_path = f'{llava_dir}/data/caps "558k" $(whoami).json'
    settings = llava_vars(
        llava_dir=str(llava_dir),
        cann_set_env=str(set_env),
        data_path=data_path,
        output_dir="./checkpoints/run 1",
        launcher=launcher,
        nnodes=nnodes,
        node_rank=nnodes - 1,
        master_addr="10.0.0.1",
        npu_devices=[2, 3],
        train_env={"HCCL_SOCKET_IFNAME": "eth0 ", "HCCL_CONNECT_TIMEOUT": "1200"},
    )
    argv, cwd, env = run_with_stub_launchers(settings, tmp_path)
    assert cwd == str(llava_dir)
    assert flag(argv, "--data_path") == data_path
    assert flag(argv, "--output_dir") == "./checkpoints/run 1"
    assert flag(argv, "--tf32") == "False"
    assert flag(argv, "--report_to") == "none"
    assert argv[-2:] == ["--report_to", "none"]
    assert env["CANN_LOADED"] == "yes"
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1"
    assert env["HCCL_SOCKET_IFNAME"] == "eth0 "
    entry = argv.index("llava/train/train_mem.py")
    assert argv[entry + 1 : entry + 3] == ["--deepspeed", "./scripts/zero2.json"]
    launch = argv[:entry]
    if launcher == "torchrun":
        assert launch[0] == "torchrun"
        assert flag(launch, "--nnodes") == str(nnodes)
        assert flag(launch, "--node_rank") == str(nnodes - 1)
        assert flag(launch, "--nproc_per_node") == "2"
        assert flag(launch, "--master_addr") == ("127.0.0.1" if nnodes == 1 else "10.0.0.1")
    elif nnodes == 1:
        assert launch == ["deepspeed", "--num_gpus", "2", "--master_port", "29500"]
    else:
        assert launch[:4] == ["python3", "-u", "-m", "deepspeed.launcher.launch"]
        assert "--node_rank=1" in launch and "--master_addr=10.0.0.1" in launch


def test_missing_cann_env_is_reported_not_fatal(tmp_path: Path) -> None:
    llava_dir = tmp_path / "LLaVA"
    llava_dir.mkdir()
    settings = llava_vars(llava_dir=str(llava_dir), cann_set_env=str(tmp_path / "absent.sh"))
    argv, _, env = run_with_stub_launchers(settings, tmp_path)
    assert argv[0] == "torchrun"
    assert "CANN_LOADED" not in env


# ------------------------------------------------------------------------ contract with config


def test_renders_what_the_config_produces(tmp_path: Path) -> None:
    package = tmp_path / "AscendCloud-6.3.906-20240701.zip"
    package.write_bytes(b"PK")
    raw = {
        f"devserver-{i}": {
            "ansible_host": f"192.168.0.{10 + i}",
            "ascendcloud_package": str(package),
            "npu_devices": "4-7",
        }
        for i in (1, 2)
    }
    fleet = config.validate_fleet(raw)
    scripts = [render_job(host.to_vars())[SCRIPT] for host in fleet.hosts]
    assert "--node_rank 0" in scripts[0] and "--node_rank 1" in scripts[1]
    assert all("export ASCEND_RT_VISIBLE_DEVICES=0,1,2,3\n" in script for script in scripts)
    for script in scripts:
        path = tmp_path / "s.sh"
        path.write_text(script)
        subprocess.run(["bash", "-n", str(path)], check=True)


# ------------------------------------------------------------------------------------ the command


def write_inventory(tmp_path: Path, hosts: int = 2, **group_vars: Any) -> Path:
    package = tmp_path / "AscendCloud-6.3.906-20240701.zip"
    package.write_bytes(b"PK")
    lines = ["[devservers]"] + [f"devserver-{i} ansible_host=192.168.0.{10 + i}" for i in range(1, hosts + 1)]
    ini = tmp_path / "devserver.ini"
    ini.write_text("\n".join(lines) + "\n")
    (tmp_path / "group_vars").mkdir()
    settings = {"ascendcloud_package": str(package), "npu_devices": "0-3", **group_vars}
    (tmp_path / "group_vars" / "all.yml").write_text(json.dumps(settings))  # JSON is YAML
    return ini


def test_command_writes_each_host_byte_for_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ini = write_inventory(tmp_path, per_device_train_batch_size=16, launcher="deepspeed")
    out = tmp_path / "out"
    assert main(["render", "-i", str(ini), "-o", str(out)]) == 0
    fleet = config.validate_fleet(inventory.load_inventory(ini).hosts)
    for host in fleet.hosts:
        expected = render_job(host.to_vars())
        script = out / host.host / "pretrain_new.sh"
        assert script.read_text() == expected[SCRIPT]
        assert (out / host.host / "zero2.json").read_text() == expected[ZERO2]
        assert script.stat().st_mode & stat.S_IXUSR
    assert "--node_rank=1" in (out / "devserver-2" / "pretrain_new.sh").read_text()
    assert str(out / "devserver-1" / "pretrain_new.sh") in capsys.readouterr().out


def test_command_one_host_and_extra_vars(tmp_path: Path) -> None:
    ini = write_inventory(tmp_path)
    out = tmp_path / "out"
    assert main(["render", "-i", str(ini), "--host", "devserver-2", "-o", str(out), "-e", "max_steps=7"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["devserver-2"]
    assert "  --max_steps 7 \\\n" in (out / "devserver-2" / "pretrain_new.sh").read_text()


def test_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["render", "-i", str(tmp_path / "absent.ini"), "-o", str(out)]) == 2
    assert "absent.ini" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    bad = write_inventory(tmp_path / "bad", launcher="mpirun")
    assert main(["render", "-i", str(bad), "-o", str(out)]) == 1
    assert "launcher" in capsys.readouterr().err
    assert not out.exists()  # invalid input changes nothing
    (tmp_path / "good").mkdir()
    good = write_inventory(tmp_path / "good")
    assert main(["render", "-i", str(good), "--host", "devserver-9", "-o", str(out)]) == 2
    assert "devserver-9" in capsys.readouterr().err
    assert not out.exists()
