"""OS profiles of simulated servers: `--os` parsing, image recipes, the profile-aware faults (no Docker)."""

from __future__ import annotations

import pytest

from llava_devserver.sim import faults
from llava_devserver.sim import image as sim_image
from llava_devserver.sim.fleet import FleetError, parse_os_choices

HOSTS = ["devserver-1", "devserver-2", "devserver-3"]


def test_default_is_debian12_everywhere() -> None:
    assert parse_os_choices([], HOSTS) == dict.fromkeys(HOSTS, "debian12")


def test_whole_fleet_then_one_server() -> None:
    assert parse_os_choices(["hce2", "2:debian12"], HOSTS) == {
        "devserver-1": "hce2",
        "devserver-2": "debian12",
        "devserver-3": "hce2",
    }
    assert parse_os_choices(["devserver-1:hce2"], HOSTS)["devserver-1"] == "hce2"


@pytest.mark.parametrize(
    "text, message",
    [("centos7", "unknown OS profile 'centos7'"), ("devserver-9:hce2", "no host 'devserver-9'"),
     ("1:rhel", "unknown OS profile 'rhel'")],
)  # fmt: skip
def test_bad_choices_name_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        parse_os_choices([text], HOSTS)


def test_debian12_base_recipe_is_unchanged_by_the_profiles() -> None:
    """The training image builds on debian12's base: its tag must not move because profiles exist."""
    recipe = sim_image.base_recipe()
    assert "profile" not in recipe and recipe["suite"] == "bookworm"
    assert sim_image.base_image_tag().startswith("llava-devserver/sim-base:")
    assert sim_image.base_image_tag("hce2").startswith("llava-devserver/sim-base-hce2:")
    assert sim_image.base_image_tag("hce2") != sim_image.base_image_tag()


def test_hce2_base_has_systemd_and_dnf_and_no_apt_tools() -> None:
    packages = set(sim_image.PROFILES["hce2"].packages)
    assert {"systemd", "dnf", "python3-dnf", "rpm", "createrepo-c", "openssh-server", "python3"} <= packages
    assert "python3-apt" not in packages and "tini" not in packages
    assert sim_image.base_recipe("hce2")["suite"] == "bullseye"  # Python 3.9


def test_server_dockerfiles_per_profile() -> None:
    hce2 = sim_image._server_dockerfile("BASE", sim_image.PROFILES["hce2"])
    assert 'ENTRYPOINT ["/lib/systemd/systemd"]' in hce2
    assert "STOPSIGNAL SIGRTMIN+3" in hce2 and "ENV container=docker" in hce2
    assert "RUN /usr/local/lib/npu-sim/hce2-setup" in hce2
    assert "COPY npu-sim-boot.service /etc/systemd/system/npu-sim-boot.service" in hce2
    debian = sim_image._server_dockerfile("BASE", sim_image.PROFILES["debian12"])
    assert "tini" in debian and "systemd" not in debian and "hce2-setup" not in debian
    for text in (hce2, debian):
        assert "COPY npu-sim-boot /usr/local/sbin/npu-sim-boot" in text


def test_every_profile_file_exists() -> None:
    for profile in sim_image.PROFILES.values():
        assert set(sim_image._server_file_bytes(profile)) == set(sim_image.SERVER_FILES) | set(profile.files)


def test_hce2_os_release_is_the_real_one() -> None:
    text = sim_image._server_file_bytes(sim_image.PROFILES["hce2"])["hce2-os-release"].decode()
    assert text.splitlines() == [
        'NAME="Huawei Cloud EulerOS"',
        'VERSION="2.0 (x86_64)"',
        'ID="hce"',
        'VERSION_ID="2.0"',
        'PRETTY_NAME="Huawei Cloud EulerOS 2.0 (x86_64)"',
        'ANSI_COLOR="0;31"',
    ]


def test_hce2_offers_the_guides_packages() -> None:
    setup = sim_image._server_file_bytes(sim_image.PROFILES["hce2"])["hce2-setup"].decode()
    for package in ("docker-engine", "docker-engine-selinux", "docker-runc", "python3-docker", "hce-release"):
        assert f"build {package} " in setup, package
    assert "rm -f /usr/bin/apt " in setup and "/usr/bin/dpkg" in setup


def test_docker_faults_use_the_servers_own_tools() -> None:
    assert "systemctl start docker.service" in faults._START_DOCKERD
    assert "setsid dockerd" in faults._START_DOCKERD
    assert "dnf install" in faults._INSTALL_DOCKER and "apt-get install" in faults._INSTALL_DOCKER
    assert sim_image.PROFILES["hce2"].docker_install.startswith("dnf install")
    assert "systemctl enable docker.service" in sim_image.PROFILES["hce2"].docker_install
