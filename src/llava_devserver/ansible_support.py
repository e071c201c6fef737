"""What the project's Ansible plugins share."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ansible.errors import AnsibleFilterError


def filter_guard(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a package function's ValueError/KeyError/TypeError into a filter error: the task fails with
    the function's message instead of a traceback."""

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (ValueError, KeyError, TypeError) as exc:
            raise AnsibleFilterError(f"{function.__name__}: {exc}") from exc

    return wrapped
