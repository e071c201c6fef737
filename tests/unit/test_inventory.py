"""Reading an inventory through Ansible's own loader: precedence, templates, vault, order and bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from llava_devserver.config import UnresolvedValue, validate_fleet
from llava_devserver.inventory import InventoryError, load_inventory, parse_extra_vars

ROOT = Path(__file__).resolve().parents[2]
GOOD = ROOT / "tests/inventories/good/devserver.ini"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_good_inventory_as_ansible_sees_it() -> None:
    inventory = load_inventory(GOOD)
    assert list(inventory.hosts) == ["ds-a", "ds-b"]
    a, b = inventory.hosts["ds-a"], inventory.hosts["ds-b"]
    assert a["npu_devices"] == "0-3"  # from the INI line
    assert b["npu_devices"] == [0, 1, 2, 3]  # from host_vars/ds-b.yml
    assert a["ansible_user"] == "root"  # [devservers:vars]
    # a template of our setting is rendered with the host's variables, as a task would see it
    assert a["ascendcloud_package"] == str(GOOD.parent / "files/AscendCloud-6.3.906-20240618000000.zip")
    assert type(a["work_dir"]) is str  # Ansible's tagged strings made plain
    assert inventory.origins["ds-b"]["npu_devices"].endswith("host_vars/ds-b.yml:2")
    assert inventory.origins["ds-a"]["work_dir"].endswith("group_vars/all.yml:3")
    fleet = validate_fleet(inventory.hosts, inventory.origins)
    assert [h.node_rank for h in fleet.hosts] == [0, 1]


def test_precedence_and_children(tmp_path: Path) -> None:
    """Ansible's order: host_vars/ > host line > group_vars/<child> > group_vars/<parent> > [group:vars] in
    the INI file (inventory-file group vars are below group_vars/ files) > group_vars/all."""
    inventory = write(
        tmp_path / "hosts.ini",
        """
        [rack1]
        n3 ansible_host=10.0.0.3
        n1 ansible_host=10.0.0.1 container_name=from-ini

        [rack2]
        n2 ansible_host=10.0.0.2

        [devservers:children]
        rack1
        rack2

        [rack2:vars]
        container_name=from-rack2
        """,
    )
    write(tmp_path / "group_vars/all.yml", "container_name: from-all\nwork_dir: /data/all\n")
    write(tmp_path / "group_vars/devservers.yml", "container_name: from-devservers\n")
    write(tmp_path / "group_vars/rack1.yml", "npu_count: 4\n")
    write(tmp_path / "host_vars/n1.yml", "work_dir: /data/n1\n")
    hosts = load_inventory(inventory).hosts
    assert list(hosts) == ["n3", "n1", "n2"]  # inventory order = node rank
    assert [hosts[h]["container_name"] for h in hosts] == ["from-devservers", "from-ini", "from-devservers"]
    assert [hosts[h].get("npu_count") for h in hosts] == [4, 4, None]
    assert [hosts[h]["work_dir"] for h in hosts] == ["/data/all", "/data/n1", "/data/all"]


def test_yaml_inventory(tmp_path: Path) -> None:
    inventory = write(
        tmp_path / "hosts.yml",
        """
        all:
          children:
            devservers:
              hosts:
                a: {ansible_host: 10.0.0.1, npu_devices: [0, 1]}
                b: {ansible_host: 10.0.0.2}
              vars:
                npu_count: 2
        """,
    )
    hosts = load_inventory(inventory).hosts
    assert hosts["a"]["npu_devices"] == [0, 1] and hosts["b"]["npu_count"] == 2


def test_extra_vars_win(tmp_path: Path) -> None:
    extra = parse_extra_vars(["work_dir=/data/extra", '{"master_port": 30000}'])
    hosts = load_inventory(GOOD, extra_vars=extra).hosts
    assert hosts["ds-a"]["work_dir"] == hosts["ds-b"]["work_dir"] == "/data/extra"
    assert hosts["ds-a"]["master_port"] == 30000


def test_extra_vars_forms(tmp_path: Path) -> None:
    varfile = write(tmp_path / "extra.yml", "launcher: deepspeed\n")
    assert parse_extra_vars(["a=1 b=two", f"@{varfile}"]) == {"a": "1", "b": "two", "launcher": "deepspeed"}
    with pytest.raises(InventoryError, match="not a mapping"):
        parse_extra_vars(["[1, 2]"])
    with pytest.raises(InventoryError, match="extra vars"):
        parse_extra_vars([f"@{tmp_path / 'missing.yml'}"])


def test_undefined_template_is_reported_per_setting(tmp_path: Path) -> None:
    inventory = write(tmp_path / "hosts.ini", "[devservers]\na ansible_host=10.0.0.1\n")
    write(tmp_path / "group_vars/all.yml", 'work_dir: "{{ base_dir }}/ws"\n')
    value = load_inventory(inventory).hosts["a"]["work_dir"]
    assert isinstance(value, UnresolvedValue) and "base_dir" in value.reason


def test_vault_encrypted_secret(tmp_path: Path) -> None:
    from ansible.parsing.vault import VaultLib, VaultSecret

    secret = "swr-password-never-printed"
    ciphertext = VaultLib([("default", VaultSecret(b"pw"))]).encrypt(secret).decode()
    inventory = write(tmp_path / "hosts.ini", "[devservers]\na ansible_host=10.0.0.1\n")
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars/all.yml").write_text(
        "container_registry_password: !vault |\n" + textwrap.indent(ciphertext, "  ") + "\n"
    )
    password_file = write(tmp_path / "vault-pass", "pw\n")
    opened = load_inventory(inventory, vault_password_file=password_file).hosts["a"]
    assert opened["container_registry_password"] == secret
    closed = load_inventory(inventory).hosts["a"]["container_registry_password"]
    assert isinstance(closed, UnresolvedValue) and secret not in closed.reason
    with pytest.raises(InventoryError, match="missing-pass"):
        load_inventory(inventory, vault_password_file=tmp_path / "missing-pass")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="no such inventory"):
        load_inventory(tmp_path / "nope.ini")


def test_broken_ini(tmp_path: Path) -> None:
    inventory = write(tmp_path / "hosts.ini", "[devservers\na ansible_host=10.0.0.1\n")
    with pytest.raises(InventoryError, match=r"hosts\.ini") as info:
        load_inventory(inventory)
    assert "ini" in str(info.value)


def test_broken_group_vars(tmp_path: Path) -> None:
    inventory = write(tmp_path / "hosts.ini", "[devservers]\na ansible_host=10.0.0.1\n")
    write(tmp_path / "group_vars/all.yml", "work_dir: [unclosed\n")
    with pytest.raises(InventoryError, match="YAML"):
        load_inventory(inventory)


def test_no_devservers_group(tmp_path: Path) -> None:
    inventory = write(tmp_path / "hosts.ini", "[servers]\na ansible_host=10.0.0.1\n")
    with pytest.raises(InventoryError, match=r"no group \[devservers\]"):
        load_inventory(inventory)


def test_empty_devservers_group_is_read_but_invalid(tmp_path: Path) -> None:
    inventory = write(tmp_path / "hosts.ini", "[devservers]\n\n[other]\nb\n")
    assert load_inventory(inventory).hosts == {}


def test_templates_render_per_host(tmp_path: Path) -> None:
    """One group_vars template, rendered with each host's own variables (results are reused only when the
    variables it names are equal)."""
    inventory = write(
        tmp_path / "hosts.ini",
        "[devservers]\na ansible_host=10.0.0.1 disk=/data1\nb ansible_host=10.0.0.2 disk=/data2\n"
        "c disk=/data1\n",
    )
    write(
        tmp_path / "group_vars/all.yml",
        'work_dir: "{{ disk }}/{{ inventory_hostname }}"\nname_dir: "{{ disk }}"\n',
    )
    write(
        tmp_path / "group_vars/devservers.yml", 'container_work_dir: "/home/ma-user/{{ disk | basename }}"\n'
    )
    hosts = load_inventory(inventory).hosts
    assert [hosts[h]["work_dir"] for h in "abc"] == ["/data1/a", "/data2/b", "/data1/c"]
    assert [hosts[h]["container_work_dir"] for h in "abc"] == [
        "/home/ma-user/data1",
        "/home/ma-user/data2",
        "/home/ma-user/data1",
    ]
