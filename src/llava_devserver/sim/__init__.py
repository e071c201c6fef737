"""The simulated DevServer fleet: Ascend DevServers as Docker containers, reached over SSH like real ones.

    llava-devserver sim up --hosts 3 --name demo -o .sim/demo [--fault 2:card-critical=3] [--no-job]
    ansible-playbook site.yml -i .sim/demo/devserver.ini
    llava-devserver sim status [--name demo]
    llava-devserver sim fault --name demo 1:npu-smi-8005          # inject into a running server
    llava-devserver sim down --name demo | --all

A simulated server (fleet.py) is a container of the `llava-devserver/sim-server` image (image.py: a
debootstrapped Debian, built locally and cached by recipe hash) on the fleet's own bridge network, with the
options that let it run its own Docker engine without `--privileged`. Its OS profile (`--os [HOST:]PROFILE`,
docs/os-profiles.md) is `debian12` (bookworm, Python 3.11, apt, tini as PID 1) or `hce2` (a stand-in for
Huawei Cloud EulerOS 2.0: Python 3.9, HCE's os-release, systemd as PID 1, dnf with a local repository of
the guide's docker-engine RPMs, no apt). At boot (files/npu-sim-boot, run by npu-sim-init under tini, or
by npu-sim-boot.service under systemd) it:

- remounts /proc/sys rw and sets net.ipv4.ip_forward=0 (a fresh server may not forward; the role turns it
  on), then re-applies persisted net.* settings from /etc/sysctl.conf and /etc/sysctl.d, as a boot does;
- creates the fake Ascend hardware from /etc/npu-sim/state.json (files/npu-sim-sync): /dev/davinci0..N-1,
  /dev/davinci_manager, /dev/devmm_svm, /dev/hisi_hdc (character devices 1:3), /usr/local/Ascend/driver
  (version.info, lib64/), /usr/local/dcmi, /var/log/npu, /usr/local/bin/npu-smi (files/npu-smi prints the
  real formats from the state);
- starts sshd: root with the fleet's key only (DIR/ssh/id_ed25519).

No Docker engine by default: the roles install it (debian12: docker.io with apt from the Debian mirror;
hce2: docker-engine with dnf from the server's own repository) and start it; the inner engine keeps its data
in a per-server volume at /var/lib/docker.

`sim up` writes DIR/devserver.ini (group `devservers`, hosts devserver-1..N at their container addresses)
and DIR/group_vars/all.yml (inventory.py): ordinary settings, 2 of the 8 cards per server given to the
training container so a 2-core machine can train, and the stand-in package, synthetic assets and training
image of the job (standin.py, assets.py, training_image.py), skipped with `--no-job`.

Faults (faults.py; `--fault HOST:FAULT` at `sim up`, `sim fault` or `apply_fault()` on a running server;
HOST is devserver-N, N or all):

- `card-critical[=NPU]`, `card-warning[=NPU]`, `card-alarm[=NPU]`: that card (default 0) reports that health;
- `fewer-cards[=K]`: K cards fewer (default 1: 7 of 8), gone from npu-smi and /dev;
- `driver-missing`: no driver directory, no device nodes, no npu-smi;
- `driver-version=X`: version.info and npu-smi report X;
- `npu-smi-8005`: npu-smi fails with `dcmi module initialize failed. ret is -8005`;
- `ip-forward-0`: ip_forward 0 and `net.ipv4.ip_forward=0` in /etc/sysctl.conf;
- `docker-preinstalled`: docker.io installed and running with an existing /etc/docker/daemon.json whose
  default runtime is `ascend` (/usr/local/Ascend/Ascend-Docker-Runtime/ascend-docker-runtime, a wrapper
  that execs runc); such servers start from the cached `sim-server-docker` image;
- `device-bound[=NPU]`: docker-preinstalled + a running container `other-user-job` holding /dev/davinciNPU.

Python API: `fleet.fleet_up(...)`, `fleet.fleet_down(...)`, `fleet.fleet_status(...)`, `fleet.server(fleet,
host)` (the container), `faults.apply_fault(container, parse_fault("card-critical=3"))`,
`image.ensure_base_image(client)`, `image.ensure_server_image(client)`.
"""
