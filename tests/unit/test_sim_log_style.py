"""`sim up --log-style megatron`: the stand-in trainer's log style is an ordinary train_env setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from llava_devserver.cli import main
from llava_devserver.config import validate_fleet
from llava_devserver.sim.inventory import LOG_STYLE_ENV, SimJob, sim_group_vars


def _job(tmp_path: Path) -> SimJob:
    """Stand-in paths that exist (the settings model checks them)."""
    package = tmp_path / "AscendCloud-6.3.906-20260101000000.zip"
    package.write_bytes(b"PK")
    assets = {key: tmp_path / key for key in ("llm", "vision_tower", "images")}
    for path in assets.values():
        path.mkdir()
    assets["pretrain_json"] = tmp_path / "blip_laion_cc_sbu_558k.json"
    assets["pretrain_json"].write_text("[]")
    (tmp_path / "train.tar").write_bytes(b"")
    return SimJob(package, assets, "llava-devserver/sim-train:abc", tmp_path / "train.tar")


def test_megatron_style_is_a_train_env_setting_that_validates(tmp_path: Path) -> None:
    job = _job(tmp_path)
    settings = sim_group_vars(2, 8, 2, job, "23.0.5", log_style="megatron")
    assert settings["train_env"] == {LOG_STYLE_ENV: "megatron"}
    fleet = validate_fleet({f"devserver-{i}": {**settings, "ansible_host": f"10.0.0.{i}"} for i in (1, 2)})
    llava = fleet.hosts[1].to_vars()
    assert llava["train_env"][LOG_STYLE_ENV] == "megatron" and llava["loss_log_node"] == "auto"
    # the default style writes nothing: the trainer's default is hf
    assert "train_env" not in sim_group_vars(2, 8, 2, job, "23.0.5")
    with pytest.raises(ValueError, match="log style 'mpi': expected one of hf, megatron"):
        sim_group_vars(2, 8, 2, job, "23.0.5", log_style="mpi")


def test_sim_up_refuses_an_unknown_style(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["sim", "up", "--log-style", "mpi"])
    assert exited.value.code == 2
    assert "--log-style: invalid choice: 'mpi'" in capsys.readouterr().err
