"""`sim up --link-mbps M` (sim/link.py, files/npu-sim-link): the speed is checked before anything starts, kept
as a file of the server, and applied by the server's own script (the fleet test measures it)."""

from __future__ import annotations

import subprocess
from importlib import resources
from typing import Any

import pytest

from llava_devserver.cli import main
from llava_devserver.sim import image, link
from sim_fakes import FakeServer

FILES = resources.files("llava_devserver.sim") / "files"


@pytest.mark.parametrize("mbps", [0, -5, link.MAX_MBPS + 1])
def test_sim_up_refuses_a_speed_out_of_range_before_starting_anything(
    mbps: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", "up", "--link-mbps", str(mbps), "--name", "never"]) == 2
    assert f"--link-mbps must be 1..{link.MAX_MBPS} (Mbit/s), got {mbps}" in capsys.readouterr().err


def test_the_speed_is_a_file_of_the_server_applied_by_its_script() -> None:
    server: Any = FakeServer()
    link.set_link(server, 80)
    link.set_link(server, None)
    assert server.commands == [
        ["bash", "-c", f"printf '%s\\n' 80 > {link.LINK_MBPS_FILE} && {link.SCRIPT}"],
        ["bash", "-c", f"rm -f {link.LINK_MBPS_FILE} && {link.SCRIPT}"],
    ]


def test_a_server_that_cannot_apply_it_is_named() -> None:
    server: Any = FakeServer(1, b"Error: Specified qdisc kind is unknown.")
    with pytest.raises(
        link.LinkError, match=r"llava-sim-x-devserver-1: setting the fleet link to 80 Mbit/s failed"
    ):
        link.set_link(server, 80)


@pytest.mark.parametrize(
    ("code", "output", "expected"), [(0, b"80\n", 80), (1, b"No such file", None), (0, b"x", None)]
)
def test_the_speed_a_server_has(code: int, output: bytes, expected: int | None) -> None:
    server: Any = FakeServer(code, output)
    assert link.link_mbps(server) == expected


def test_every_server_image_has_the_script_and_its_boot_runs_it() -> None:
    assert image.SERVER_FILES["npu-sim-link"] == link.SCRIPT
    script = (FILES / "npu-sim-link").read_text()
    assert subprocess.run(["bash", "-n", "-c", script], check=False).returncode == 0
    assert link.LINK_MBPS_FILE in script
    boot = (FILES / "npu-sim-boot").read_text()
    assert f"{link.SCRIPT} ||" in boot  # a failed shaping is said, the boot goes on
