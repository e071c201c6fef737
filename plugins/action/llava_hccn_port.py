"""Action `llava_hccn_port`: set one NPU port's device IP (and detect IP) with hccn_tool, idempotently.

Reads `hccn_tool -i CARD -ip -g` (and `-netdetect -g`) on the server, parses them on the controller with
the project's one parser (`llava_devserver.npu_network.port_plan`), and runs `-ip -s address A netmask M`
(`-netdetect -s address D`) only where the port differs. Check mode runs nothing and says what would change;
`--diff` shows the port before and after.

Options: `tool` (hccn_tool's path), `card`, `address`, `netmask`, `detect_ip` (optional).
"""

from __future__ import annotations

import shlex
from typing import Any

from ansible.plugins.action import ActionBase

from llava_devserver import hccn, npu_network


def _show(card: int, port: dict[str, Any]) -> str:
    text = f"card {card}: address {port.get('address') or 'none'} netmask {port.get('netmask') or 'none'}"
    if "detect_ip" in port:
        text += f" detect_ip {port['detect_ip'] or 'none'}"
    return text + "\n"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset({"tool", "card", "address", "netmask", "detect_ip"})

    def _run(self, argv: list[Any]) -> dict[str, Any]:
        command = " ".join(shlex.quote(str(word)) for word in argv) + " 2>&1"
        return dict(self._low_level_execute_command(command))

    def run(self, tmp: Any = None, task_vars: Any = None) -> dict[str, Any]:
        result = dict(super().run(tmp, task_vars))
        args = self._task.args
        try:
            tool, card = str(args["tool"]), int(args["card"])
            address, netmask = str(args["address"]), str(args["netmask"])
        except (KeyError, TypeError, ValueError) as exc:
            return {
                **result,
                "failed": True,
                "msg": f"llava_hccn_port: needs tool, card, address, netmask ({exc})",
            }
        detect_ip = str(args["detect_ip"]) if args.get("detect_ip") else None
        ip_out = self._run([tool, "-i", card, "-ip", "-g"])
        detect_out = self._run([tool, "-i", card, "-netdetect", "-g"]) if detect_ip else None
        try:
            plan = npu_network.port_plan(
                card,
                str(ip_out.get("stdout", "")),
                str(detect_out.get("stdout", "")) if detect_out else None,
                address,
                netmask,
                detect_ip,
                tool,
            )
        except hccn.HccnParseError as exc:
            return {**result, "failed": True, "msg": f"card {card}: {exc.message}"}
        result["changed"] = bool(plan["commands"])
        result["diff"] = {
            "before_header": f"device port {card}",
            "after_header": f"device port {card}",
            "before": _show(card, plan["before"]),
            "after": _show(card, plan["after"]),
        }
        result["commands"] = [" ".join(argv) for argv in plan["commands"]]
        if self._play_context.check_mode or not plan["commands"]:
            return result
        for argv in plan["commands"]:
            done = self._run(argv)
            if done.get("rc") != 0:
                output = str(done.get("stdout", "")).strip()[-500:]
                return {**result, "failed": True, "msg": f"card {card}: {' '.join(argv)} failed: {output}"}
        return result
