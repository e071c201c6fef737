"""Faults of a simulated DevServer, for negative tests: parse them, and apply them to a running server.

A fault is written `KIND` or `KIND=VALUE`; on the command line `HOST:KIND[=VALUE]` where HOST is the
inventory name (`devserver-2`), its number (`2`) or `all`.

- `card-critical[=NPU]`: card NPU (default 0) reports health `Critical` in npu-smi;
  `card-warning[=NPU]`, `card-alarm[=NPU]`: ... `Warning`, `Alarm`.
- `fewer-cards[=K]`: K cards fewer (default 1: 7 of 8); the last ones vanish from npu-smi and /dev.
- `card-lost[=NPU]`: the driver lost card NPU (default 0): gone from npu-smi and /dev, still on the PCI bus
  (lspci).
- `card-ecc[=NPU]`: card NPU (default 0) counted 2 uncorrectable HBM ECC errors (npu-smi info -t ecc).
- `driver-missing`: no /usr/local/Ascend/driver, no /dev/davinci*, no npu-smi (command not found).
- `driver-version=X`: the driver (version.info, npu-smi) reports version X.
- `npu-smi-8005`: every npu-smi call fails with the DCMI error -8005.
- `ip-forward-0`: net.ipv4.ip_forward=0 now and `net.ipv4.ip_forward=0` in /etc/sysctl.conf (as the
  guide shows). (Every server boots with ip_forward=0 anyway; this also persists it.)
- `docker-preinstalled`: Docker installed and running, with an existing /etc/docker/daemon.json that makes the
  Ascend runtime the default (`default-runtime: ascend`; the runtime is a wrapper that execs runc, so the
  engine works). On a debian12 server: apt's docker.io, dockerd started in the background (no init system);
  on an hce2 server: dnf's docker-engine, `docker.service` enabled and started by systemd.
- `device-bound[=NPU]`: docker-preinstalled + a running container `other-user-job` that holds
  /dev/davinciNPU (default 0).
- `accel-slow`: the server's link to the fleet network sends at most SLOW_LINK_RATE (a token bucket, `tc qdisc
  ... tbf`, on its egress), as a server whose port fell back to a low rate: every collective it is in is slow,
  on every rank of it (the others wait for its data), while SSH and Ansible stay usable. Not kept over a
  restart of the server; `clear_fault` (`sim fault --clear`) removes it.
- The NPUs' own network (`hccn_tool`, see sim/device_network.py): `hccn-link-down[=CARD]` (the card's
  port is DOWN), `hccn-no-ip[=CARD]`, `hccn-tls-on[=CARD]`, `hccn-dup-ip[=CARD]` (the device IP of the
  same card of the first server), `hccn-unhealthy[=CARD]` (net health Fault), `hccn-ping-loss=PCT`
  (pings from this server to the others lose PCT %), `hccn-link-flaps[=CARD]`. npu-sim-sync publishes
  the server's ports to the fleet's shared volume, where every server's `hccn_tool -ping` sees them.

Card and driver faults are edits of the npu-smi state file (/etc/npu-sim/state.json) followed by
`npu-sim-sync`, which makes /dev and the driver tree match it; they survive a restart of the server.
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile
import time
from dataclasses import dataclass
from typing import Any

from docker.models.containers import Container

from llava_devserver.sim import device_network, link

STATE_PATH = "/etc/npu-sim/state.json"
ASCEND_RUNTIME = "/usr/local/Ascend/Ascend-Docker-Runtime/ascend-docker-runtime"
OTHER_JOB_CONTAINER = "other-user-job"
OTHER_JOB_IMAGE = "sim/other-user-job:latest"

HEALTH_FAULTS = {"card-critical": "Critical", "card-warning": "Warning", "card-alarm": "Alarm"}
FAULT_KINDS: dict[str, str] = {
    "card-critical": "card NPU (default 0) reports health Critical",
    "card-warning": "card NPU (default 0) reports health Warning",
    "card-alarm": "card NPU (default 0) reports health Alarm",
    "fewer-cards": "K cards fewer (default 1: 7 of 8)",
    "card-lost": "the driver lost card NPU (default 0); it stays on the PCI bus",
    "card-ecc": "card NPU (default 0) counted 2 uncorrectable HBM ECC errors",
    "driver-missing": "no Ascend driver, device nodes or npu-smi",
    "driver-version": "the driver reports version VALUE (required)",
    "npu-smi-8005": "npu-smi fails with -8005",
    "ip-forward-0": "net.ipv4.ip_forward=0, also in /etc/sysctl.conf",
    "docker-preinstalled": "Docker installed and running with an Ascend-runtime daemon.json",
    "device-bound": "docker-preinstalled + container other-user-job holding /dev/davinciNPU (default 0)",
    "accel-slow": "the server's fleet link sends slowly: every collective it is in is slow",
    **device_network.HCCN_FAULTS,
}
# Faults whose server is best started from the image with Docker already installed.
DOCKER_FAULTS = frozenset({"docker-preinstalled", "device-bound"})
_NEEDS_VALUE = frozenset({"driver-version", "hccn-ping-loss"})
_INT_VALUE = frozenset(
    {*HEALTH_FAULTS, "fewer-cards", "card-lost", "card-ecc", "device-bound", *device_network.HCCN_FAULTS}
)
_NO_VALUE = frozenset({"driver-missing", "npu-smi-8005", "ip-forward-0", "docker-preinstalled", "accel-slow"})
# Faults that `clear_fault` can take back from a running server.
CLEARABLE = frozenset({"accel-slow"})
# accel-slow: the egress rate of the server's fleet link. The simulated fleet's gloo all_reduce runs at about
# 0.1 GB/s (3 servers on 2 shared cores); 40 Mbit/s (0.005 GB/s) is 20 times less, and a 4 MiB all_reduce
# still takes about a second.
SLOW_LINK_RATE = "40mbit"
# Our qdisc's handle, so that clearing never removes one we did not add.
SLOW_LINK_HANDLE = "1a5:"
# The interface of the server's default route: its link to the fleet network.
_FLEET_DEV = "dev=$(ip -o route show default | awk '{print $5; exit}'); dev=${dev:-eth0}"


class FaultError(ValueError):
    """A fault is misspelt, or could not be applied to a server."""


@dataclass(frozen=True)
class Fault:
    kind: str
    value: str | None = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value}"

    @property
    def npu(self) -> int:
        """The card a card/device fault is about (default 0)."""
        return int(self.value) if self.value is not None else 0


def parse_fault(text: str) -> Fault:
    """`card-critical=3` -> Fault('card-critical', '3'); raises FaultError naming the faults that exist."""
    kind, sep, value = text.strip().partition("=")
    kind = kind.strip()
    if kind not in FAULT_KINDS:
        known = ", ".join(FAULT_KINDS)
        raise FaultError(f"unknown fault {kind!r} (known: {known})")
    value = value.strip()
    if kind in _NEEDS_VALUE and not value:
        raise FaultError(f"fault {kind} needs a value: {kind}=VALUE")
    if kind in _NO_VALUE and sep:
        raise FaultError(f"fault {kind} takes no value (got {text!r})")
    if kind in _INT_VALUE and value and not value.isdigit():
        raise FaultError(f"fault {kind} takes a card number, got {value!r}")
    return Fault(kind, value or None)


def parse_host_fault(text: str, hosts: list[str]) -> list[tuple[str, Fault]]:
    """`devserver-2:card-critical=3`, `2:fewer-cards` or `all:ip-forward-0` -> [(host, Fault), ...]."""
    host, sep, fault_text = text.partition(":")
    if not sep or not host or not fault_text:
        raise FaultError(f"--fault {text!r}: write HOST:FAULT, e.g. devserver-2:card-critical=3")
    fault = parse_fault(fault_text)
    if host == "all":
        return [(name, fault) for name in hosts]
    if host.isdigit():
        index = int(host)
        if not 1 <= index <= len(hosts):
            raise FaultError(f"--fault {text!r}: there is no server {index} (the fleet has {len(hosts)})")
        return [(hosts[index - 1], fault)]
    if host not in hosts:
        raise FaultError(f"--fault {text!r}: no host {host!r} in the fleet ({', '.join(hosts)})")
    return [(host, fault)]


def edit_state(state: dict[str, Any], fault: Fault) -> dict[str, Any]:
    """Return the npu-smi state with a card/driver/npu-smi fault applied (pure, unit-tested)."""
    new = json.loads(json.dumps(state))
    cards: list[dict[str, Any]] = new.setdefault("cards", [])
    if fault.kind in HEALTH_FAULTS:
        for card in cards:
            if int(card["npu"]) == fault.npu:
                card["health"] = HEALTH_FAULTS[fault.kind]
                break
        else:
            raise FaultError(f"fault {fault}: the server has no card {fault.npu}")
    elif fault.kind == "fewer-cards":
        drop = fault.npu if fault.value is not None else 1
        if drop > len(cards):
            raise FaultError(f"fault {fault}: the server has only {len(cards)} cards")
        del cards[len(cards) - drop :]
    elif fault.kind in ("card-lost", "card-ecc"):
        target = [c for c in cards if int(c["npu"]) == fault.npu]
        if not target:
            raise FaultError(f"fault {fault}: the server has no card {fault.npu}")
        if fault.kind == "card-ecc":
            target[0]["ecc"] = {"hbm_single": 17, "hbm_double": 2, "hbm_double_pages": 2}
        else:
            cards.remove(target[0])
            new.setdefault("pci_only_bus_ids", []).append(target[0].get("bus_id"))
    elif fault.kind == "driver-missing":
        new["driver_installed"] = False
    elif fault.kind == "driver-version":
        new["driver_version"] = fault.value
        new["npu_smi_version"] = fault.value
    elif fault.kind == "npu-smi-8005":
        new["error"] = "-8005"
    elif fault.kind in device_network.HCCN_FAULTS:
        try:
            new = device_network.apply_hccn_fault(new, fault.kind, fault.value)
        except ValueError as exc:
            raise FaultError(f"fault {fault}: {exc}") from exc
    else:
        raise FaultError(f"fault {fault} is not a state fault")
    return new


STATE_FAULTS = frozenset(
    {
        *HEALTH_FAULTS,
        "fewer-cards",
        "card-lost",
        "card-ecc",
        "driver-missing",
        "driver-version",
        "npu-smi-8005",
        *device_network.HCCN_FAULTS,
    }
)


# --- applying to a running server -------------------------------------------------------------------------


def _name(container: Container) -> str:
    return str(container.labels.get("llava-devserver.sim.host", container.name))


def run_in(container: Container, script: str, what: str, timeout_s: int = 300) -> str:
    """Run a shell script in the server; raise FaultError with its output when it fails."""
    wrapped = f"timeout {timeout_s} bash -euo pipefail -c {shlex.quote(script)}"
    code, output = container.exec_run(["bash", "-c", wrapped], user="root")
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    if code != 0:
        raise FaultError(f"{_name(container)}: {what} failed (exit {code}):\n{text[-2000:]}")
    return text


def put_file(container: Container, path: str, data: bytes, mode: int = 0o644) -> None:
    """Write one file into the container (running or only created) through the Docker API."""
    directory, _, name = path.rpartition("/")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    if not container.put_archive(directory or "/", buffer.getvalue()):
        raise FaultError(f"{_name(container)}: could not write {path}")


def read_state(container: Container) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(run_in(container, f"cat {STATE_PATH}", "reading the npu-smi state"))
    return state


def write_state(container: Container, state: dict[str, Any]) -> None:
    put_file(container, STATE_PATH, (json.dumps(state, indent=2) + "\n").encode())
    run_in(container, "/usr/local/sbin/npu-sim-sync", "syncing the fake hardware to the state")


def apply_fault(container: Container, fault: Fault) -> None:
    """Apply one fault to a running simulated server (idempotent)."""
    if fault.kind in STATE_FAULTS:
        write_state(container, edit_state(read_state(container), fault))
    elif fault.kind == "ip-forward-0":
        run_in(
            container,
            "sysctl -q -w net.ipv4.ip_forward=0; touch /etc/sysctl.conf;"
            " sed -i '/^[[:space:]]*net\\.ipv4\\.ip_forward[[:space:]]*=/d' /etc/sysctl.conf;"
            " echo net.ipv4.ip_forward=0 >> /etc/sysctl.conf",
            "setting ip_forward=0",
        )
    elif fault.kind == "docker-preinstalled":
        _preinstall_docker(container)
    elif fault.kind == "device-bound":
        _preinstall_docker(container)
        _bind_device(container, fault.npu)
    elif fault.kind == "accel-slow":
        run_in(container, slow_link_script(), "slowing the server's fleet link (tc)")
    else:  # parse_fault keeps this unreachable
        raise FaultError(f"unknown fault {fault}")


def clear_fault(container: Container, fault: Fault) -> None:
    """Take a fault back from a running simulated server (idempotent); only the CLEARABLE ones."""
    if fault.kind not in CLEARABLE:
        raise FaultError(
            f"fault {fault} cannot be cleared on a running server (only {', '.join(sorted(CLEARABLE))}); "
            "start a new fleet"
        )
    run_in(container, slow_link_script(clear=True), "restoring the server's fleet link (tc)")


def slow_link_script(clear: bool = False) -> str:
    """The shell that adds (or removes) accel-slow's token bucket on the server's fleet link."""
    ours = f"tc qdisc show dev \"$dev\" | grep -q '^qdisc tbf {SLOW_LINK_HANDLE} root'"
    if clear:
        # Then the link's own speed again (`sim up --link-mbps`; nothing when the fleet has none).
        return f'{_FLEET_DEV}; if {ours}; then tc qdisc del dev "$dev" root; fi; {link.SCRIPT}'
    # burst: at least rate/HZ, or the bucket cannot reach its rate; latency bounds the queue.
    return (
        f'{_FLEET_DEV}; tc qdisc replace dev "$dev" root handle {SLOW_LINK_HANDLE} tbf rate {SLOW_LINK_RATE} '
        f"burst 64kb latency 400ms && {ours}"
    )


DAEMON_JSON = {
    "runtimes": {"ascend": {"path": ASCEND_RUNTIME, "runtimeArgs": []}},
    "default-runtime": "ascend",
    "log-opts": {"max-size": "100m"},
}
# The real Ascend Docker Runtime injects the NPUs and then runs runc; ours only runs runc.
RUNTIME_WRAPPER = '#!/bin/sh\n# Simulated Ascend Docker Runtime: no devices to inject here.\nexec runc "$@"\n'

# Each profile's way, decided on the server: systemd (hce2) starts and enables docker.service, as an engine
# preinstalled on a real HCE server runs; without an init system (debian12) dockerd runs in the background.
_START_DOCKERD = """
if [ -d /run/systemd/system ]; then
  systemctl enable docker.service >/dev/null 2>&1
  systemctl start docker.service || { journalctl -u docker.service -n 30 --no-pager; exit 1; }
elif ! docker info >/dev/null 2>&1; then
  setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &
fi
for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && exit 0; sleep 1; done
echo "dockerd did not answer within 60 s:"
if [ -d /run/systemd/system ]; then journalctl -u docker.service -n 30 --no-pager
else tail -n 30 /var/log/dockerd.log; fi
exit 1
"""

# The server's own package manager: dnf (hce2: the guide's packages) or apt (debian12: docker.io).
_INSTALL_DOCKER = """
command -v dockerd >/dev/null && exit 0
if command -v dnf >/dev/null; then
  dnf install -y -q docker-engine docker-engine-selinux docker-runc >/dev/null
else
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
"""


def _preinstall_docker(container: Container) -> None:
    run_in(container, _INSTALL_DOCKER, "installing Docker", timeout_s=900)
    run_in(container, f"mkdir -p {ASCEND_RUNTIME.rsplit('/', 1)[0]} /etc/docker", "creating directories")
    put_file(container, ASCEND_RUNTIME, RUNTIME_WRAPPER.encode(), mode=0o755)
    put_file(container, "/etc/docker/daemon.json", (json.dumps(DAEMON_JSON, indent=4) + "\n").encode())
    run_in(container, _START_DOCKERD, "starting dockerd")


# A one-binary image for the inner engine (it cannot pull): `sleep` and the libraries it links.
_IMPORT_SLEEP_IMAGE = f"""
if ! docker image inspect {OTHER_JOB_IMAGE} >/dev/null 2>&1; then
  root=$(mktemp -d)
  mkdir -p "$root/bin"
  cp /usr/bin/sleep "$root/bin/sleep"
  for lib in $(ldd /usr/bin/sleep | grep -o '/[^ ]*'); do cp --parents -L "$lib" "$root"; done
  tar -C "$root" -c . | docker import - {OTHER_JOB_IMAGE} >/dev/null
  rm -rf "$root"
fi
"""


def _bind_device(container: Container, npu: int) -> None:
    run_in(container, f"test -c /dev/davinci{npu}", f"finding /dev/davinci{npu} for device-bound")
    run_in(container, _IMPORT_SLEEP_IMAGE, "importing the other user's image into the inner engine")
    run_in(
        container,
        f"docker inspect {OTHER_JOB_CONTAINER} >/dev/null 2>&1"
        f" && docker start {OTHER_JOB_CONTAINER} >/dev/null"
        f" || docker run -d --name {OTHER_JOB_CONTAINER} --device=/dev/davinci{npu}"
        f" {OTHER_JOB_IMAGE} /bin/sleep infinity >/dev/null",
        f"starting {OTHER_JOB_CONTAINER} with /dev/davinci{npu}",
    )
