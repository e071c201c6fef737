# Copyright: llava-devserver contributors
# Apache License 2.0 (see the collection's galaxy.yml)
"""Documentation of the action plugin llava.devserver.llava_validate (plugins/action/llava_validate.py)."""

DOCUMENTATION = r"""
module: llava_validate
short_description: Validate the llava-devserver settings of a whole group of DevServers
description:
  - Checks the settings of every host of O(group) with the llava-devserver settings model (the code of
    C(llava-devserver validate)) and returns each server's normalized settings, the C(llava) dict.
  - Runs on the control node only; it never connects to a server. Run it once (C(run_once=true)).
  - "Fails with every error at once, one line each as C(HOST: SETTING: message)."
version_added: 0.1.0
author: llava-devserver contributors (@llava-devserver)
options:
  group:
    description: The inventory group holding the DevServers.
    type: str
    default: devservers
  play_hosts:
    description: The hosts that get an entry in RV(play_hosts) (the play's hosts under C(--limit)).
    type: list
    elements: str
    default: every host of O(group)
extends_documentation_fragment:
  - llava.devserver.action_plugin
attributes:
  diff_mode:
    description: Returns the state before and after, in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Validate the settings of every server of devservers
  llava.devserver.llava_validate:
    group: devservers
    play_hosts: "{{ ansible_play_hosts_all }}"
  run_once: true
  register: llava_validation
"""

RETURN = r"""
hosts:
  description: The llava dict of every server of O(group), by inventory name.
  returned: success
  type: dict
play_hosts:
  description: One entry per host of O(play_hosts), C({host, llava}).
  returned: success
  type: list
  elements: dict
"""
