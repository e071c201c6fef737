# Copyright: llava-devserver contributors
# Apache License 2.0 (see the collection's galaxy.yml)
"""Documentation of the action plugin llava.devserver.llava_hccn_port (plugins/action/llava_hccn_port.py)."""

DOCUMENTATION = r"""
module: llava_hccn_port
short_description: Set the device IP (and detect IP) of one NPU port with hccn_tool, idempotently
description:
  - Reads C(hccn_tool -i CARD -ip -g) (and C(-netdetect -g)) on the server, compares them on the control node
    with the wanted address, and runs C(hccn_tool -i CARD -ip -s address A netmask M)
    (C(-netdetect -s address D)) only where the port differs.
  - Check mode runs nothing and says what would change; diff mode shows the port before and after.
version_added: 0.1.0
author: llava-devserver contributors (@llava-devserver)
options:
  tool:
    description: Path of hccn_tool on the server.
    type: path
    required: true
  card:
    description: The NPU id (C(hccn_tool -i)).
    type: int
    required: true
  address:
    description: The device IP to set.
    type: str
    required: true
  netmask:
    description: Its netmask, dotted.
    type: str
    required: true
  detect_ip:
    description: The address the port's link detection pings; unset, the detect IP is not changed.
    type: str
extends_documentation_fragment:
  - llava.devserver.action_plugin
attributes:
  diff_mode:
    description: Returns the state before and after, in diff mode.
    support: full
"""

EXAMPLES = r"""
- name: Set the device IP of NPU 0
  llava.devserver.llava_hccn_port:
    tool: /usr/local/Ascend/driver/tools/hccn_tool
    card: 0
    address: 10.90.2.11
    netmask: 255.255.255.0
    detect_ip: 10.90.2.1
"""

RETURN = r"""
commands:
  description: The hccn_tool commands run (or, in check mode, that would run).
  returned: always
  type: list
  elements: str
"""
