# Copyright: llava-devserver contributors
# Apache License 2.0 (see the collection's galaxy.yml)
"""What every action plugin of the collection shares in its documentation."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
requirements:
  - the Python package llava-devserver on the control node
attributes:
  check_mode:
    description: Can run in check mode and return the changes it would make.
    support: full
  action:
    description: An action plugin does the work on the control node; the module file only documents it.
    support: full
"""
