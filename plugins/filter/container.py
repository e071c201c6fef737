"""Jinja2 filters over `llava_devserver.container_spec` for the role training_container (no logic here).

- `{{ llava | training_container_spec }}`: docker_container parameters and what the checks need.
- `{{ checks | training_container_mount_problems(host, stats) }}`: missing/wrong-type mount sources.
- `{{ inspect_text | training_container_bound_problems(host, npus, own_name) }}`: NPUs held elsewhere.
- `{{ None | llava_docker_holders_format }}`: the `docker inspect --format` of those checks (only the fields
  they read), for this role and npu_check.
- `{{ image | training_container_registry }}`: the registry a reference is pulled from.
- `{{ text | training_container_redact([secret]) }}`: the text without the secrets.
- `{{ message | training_container_pull_problem(host, image) }}`,
  `{{ message | training_container_login_problem(host, registry, username) }}`,
  `{{ loaded_names | training_container_loaded_problem(host, image, archive) }}` ("" when fine),
  `{{ npu_smi_dict | training_container_visible_problems(host, name, npus) }}`,
  `{{ inspect | training_container_report(image_inspect) }}`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llava_devserver import container_spec as spec
from llava_devserver.ansible_support import filter_guard as _guard
from llava_devserver.npu_devices import HOLDERS_FORMAT


def training_container_spec(llava: Mapping[str, Any]) -> dict[str, Any]:
    return spec.container_spec(llava)


def training_container_mount_problems(
    checks: Sequence[Mapping[str, Any]], host: str, stats: Sequence[Mapping[str, Any]]
) -> list[str]:
    return spec.mount_problems(host, checks, stats)


def training_container_bound_problems(
    inspect_output: Any, host: str, npus: Sequence[Any], own: str
) -> list[str]:
    return spec.bound_npu_problems(host, inspect_output, npus, own)


def training_container_pull_problem(message: Any, host: str, image: str) -> str:
    return spec.pull_problem(host, image, str(message))


def training_container_login_problem(message: Any, host: str, registry: str, username: str | None) -> str:
    return spec.login_problem(host, registry, username, str(message))


def training_container_loaded_problem(loaded: Sequence[str], host: str, image: str, archive: str) -> str:
    """The sentence, or "" when the archive brought the image (a string either way, for `| length`)."""
    return spec.loaded_problem(host, image, archive, loaded) or ""


def training_container_visible_problems(
    npu_smi: Mapping[str, Any], host: str, name: str, npus: Sequence[Any]
) -> list[str]:
    return spec.visible_npu_problems(host, name, npu_smi, npus)


def training_container_report(
    inspect: Mapping[str, Any], image_inspect: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return spec.container_report(inspect, image_inspect)


FILTERS: dict[str, Callable[..., Any]] = {
    "training_container_spec": training_container_spec,
    "training_container_mount_problems": training_container_mount_problems,
    "training_container_bound_problems": training_container_bound_problems,
    "llava_docker_holders_format": lambda _=None: HOLDERS_FORMAT,
    "training_container_registry": spec.registry_of,
    "training_container_redact": spec.redact,
    "training_container_pull_problem": training_container_pull_problem,
    "training_container_login_problem": training_container_login_problem,
    "training_container_loaded_problem": training_container_loaded_problem,
    "training_container_visible_problems": training_container_visible_problems,
    "training_container_report": training_container_report,
}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {name: _guard(function) for name, function in FILTERS.items()}
