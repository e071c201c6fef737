"""`{{ groups.devservers | default([]) | llava_play_batch(hostvars | default({}), 'serial') }}`: the serial
(or max_fail_percentage) of a play header (llava_devserver.rolling; no logic here)."""

from __future__ import annotations

from typing import Any

from llava_devserver import rolling
from llava_devserver.ansible_support import filter_guard


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"llava_play_batch": filter_guard(rolling.play_batch_setting)}
