"""The checkout importable as the collection llava.devserver, as `ansible-test units` sees a collection.

The repository root is the collection (galaxy.yml, plugins/, roles/), and collections/ansible_collections/
llava/devserver links back to it (ansible.cfg's collections_path): tests import its plugins as
`ansible_collections.llava.devserver.plugins.filter.<name>`, the name Ansible gives them.
"""

from __future__ import annotations

import sys
from pathlib import Path

COLLECTIONS_DIR = Path(__file__).resolve().parents[1] / "collections"

if str(COLLECTIONS_DIR) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_DIR))
