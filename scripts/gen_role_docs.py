#!/usr/bin/env python3
"""Write the knob table of every role's README from its meta/argument_specs.yml, and check the knobs.

    python scripts/gen_role_docs.py          # rewrite the tables that are out of date
    python scripts/gen_role_docs.py --check  # exit 1 when a table is out of date or a role disagrees

A role's knobs are written in two places by hand: `defaults/main.yml` (the values Ansible uses) and
`meta/argument_specs.yml` (their type, choices, default and description, which Ansible checks at run time).
`role_problems` says where the two disagree; the README's table between the role-knobs markers is generated
from the argument specs (the only part of the README this script touches), so it cannot drift.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ROLES = ROOT / "roles"
START = "<!-- role-knobs:start -->"
END = "<!-- role-knobs:end -->"
# The validated settings every entry point declares (docs/architecture.md, Contract 5); not a knob.
LLAVA = "llava"
# Python types a default may have for each argument-spec type (Ansible converts ints to floats, paths are
# strings, raw takes anything).
TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "path": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
    "raw": (object,),
}


def role_dirs() -> list[Path]:
    return sorted(path for path in ROLES.iterdir() if (path / "tasks").is_dir())


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.exists() else None


def defaults_of(role: Path) -> dict[str, Any]:
    return _yaml(role / "defaults" / "main.yml") or {}


def entry_points(role: Path) -> dict[str, dict[str, Any]]:
    specs = _yaml(role / "meta" / "argument_specs.yml") or {}
    return dict(specs.get("argument_specs") or {})


def knob_specs(role: Path) -> dict[str, dict[str, Any]]:
    """The knobs of the role's main entry point: {name: its argument spec}, `llava` left out."""
    options = (entry_points(role).get("main") or {}).get("options") or {}
    return {name: dict(spec or {}) for name, spec in options.items() if name != LLAVA}


def _is_type(value: Any, kind: str) -> bool:
    allowed = TYPES.get(kind)
    if allowed is None:
        return False
    if kind in ("int", "float") and isinstance(value, bool):
        return False
    return isinstance(value, allowed)


def _spec_problems(role: str, entry: str, name: str, spec: Mapping[str, Any]) -> list[str]:
    where = f"{role}: argument_specs {entry}.{name}"
    problems = []
    kind = str(spec.get("type", "str"))
    if kind not in TYPES:
        problems.append(f"{where}: unknown type {kind!r}")
    if not spec.get("description"):
        problems.append(f"{where}: no description")
    if "default" in spec:
        default = spec["default"]
        # A template (`{{ llava.x }}`) is the value Ansible computes from the settings, of any type.
        templated = isinstance(default, str) and default.startswith("{{") and default.endswith("}}")
        if kind in TYPES and not templated and not _is_type(default, kind):
            problems.append(f"{where}: default {default!r} is not a {kind}")
        if "choices" in spec and default not in spec["choices"]:
            problems.append(f"{where}: default {default!r} is not one of its choices {spec['choices']}")
        if kind == "list" and "elements" in spec and isinstance(default, list):
            wrong = [item for item in default if not _is_type(item, str(spec["elements"]))]
            if wrong:
                problems.append(f"{where}: default items {wrong!r} are not {spec['elements']}")
    return problems


def _contract(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """What two entry points must agree on for one knob (the description may say it in other words)."""
    return {key: value for key, value in (spec or {}).items() if key != "description"}


def role_problems(role: Path) -> list[str]:
    """Where defaults/main.yml and meta/argument_specs.yml disagree, or a spec is incomplete."""
    name = role.name
    defaults = defaults_of(role)
    entries = entry_points(role)
    if "main" not in entries:
        return [f"{name}: meta/argument_specs.yml has no main entry point"]
    knobs = knob_specs(role)
    problems = []
    for missing in sorted(set(defaults) - set(knobs)):
        problems.append(f"{name}: {missing} is in defaults/main.yml but not in argument_specs main")
    for missing in sorted(set(knobs) - set(defaults)):
        problems.append(f"{name}: {missing} is in argument_specs main but not in defaults/main.yml")
    for knob in sorted(set(knobs) & set(defaults)):
        spec = knobs[knob]
        if "default" not in spec:
            problems.append(f"{name}: argument_specs main.{knob} has no default")
        elif spec["default"] != defaults[knob]:
            problems.append(
                f"{name}: {knob} defaults to {defaults[knob]!r} in defaults/main.yml but to "
                f"{spec['default']!r} in argument_specs"
            )
    for knob in sorted(set(knobs) | set(defaults)):
        if not knob.startswith(name + "_"):
            problems.append(f"{name}: knob {knob} is not prefixed with the role name")
    for entry, spec in entries.items():
        options = (spec or {}).get("options") or {}
        llava = options.get(LLAVA) or {}
        if llava.get("type") != "dict" or llava.get("required") is not True:
            problems.append(f"{name}: argument_specs {entry} must declare {LLAVA} (dict, required)")
        for option, option_spec in options.items():
            if option == LLAVA:
                continue
            problems += _spec_problems(name, entry, option, option_spec or {})
            if entry != "main" and option in knobs and _contract(option_spec) != _contract(knobs[option]):
                problems.append(f"{name}: argument_specs {entry}.{option} differs from main.{option}")
            elif entry != "main" and option not in knobs:
                problems.append(f"{name}: argument_specs {entry}.{option} is not a knob of main")
    return problems


# ------------------------------------------------------------------------------------------ the table


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _default(value: Any) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, list | dict):
        flow = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()
        return f"`{flow}`"
    return f"`{value}`"


def _type(spec: Mapping[str, Any]) -> str:
    kind = str(spec.get("type", "str"))
    if kind == "list" and "elements" in spec:
        kind = f"list of {spec['elements']}"
    if "choices" in spec:
        kind += ": " + ", ".join(f"`{choice}`" for choice in spec["choices"])
    return kind


def _description(spec: Mapping[str, Any]) -> str:
    text = spec.get("description") or ""
    return " ".join(text) if isinstance(text, list) else str(text)


def knob_table(role: Path) -> str:
    """The README block: one row per knob of the main entry point, in the order of the specs."""
    lines = [
        START,
        "",
        "Generated from `meta/argument_specs.yml` by `scripts/gen_role_docs.py`; the values are in "
        "`defaults/main.yml`.",
        "",
    ]
    knobs = knob_specs(role)
    if knobs:
        lines += ["| variable | type | default | meaning |", "|---|---|---|---|"]
        lines += [
            f"| `{name}` | {_cell(_type(spec))} | {_cell(_default(spec.get('default')))} "
            f"| {_cell(_description(spec))} |"
            for name, spec in knobs.items()
        ]
    else:
        lines.append("The role has no knobs.")
    lines += ["", END]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def readme_with_table(role: Path) -> str:
    readme = role / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if START not in text or END not in text:
        raise ValueError(f"{_shown(readme)}: the markers {START} / {END} are missing")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    return head + knob_table(role) + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a README or a role is out of date")
    args = parser.parse_args(argv)
    failed = False
    for role in role_dirs():
        for problem in role_problems(role):
            print(problem, file=sys.stderr)
            failed = True
        readme = role / "README.md"
        try:
            wanted = readme_with_table(role)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        if readme.read_text() == wanted:
            continue
        if args.check:
            print(f"{_shown(readme)} is out of date: run scripts/gen_role_docs.py", file=sys.stderr)
            failed = True
        else:
            readme.write_text(wanted)
            print(f"wrote {_shown(readme)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
