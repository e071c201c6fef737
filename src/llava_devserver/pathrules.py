"""What a path or a name in the inventory may be: normalized first, then judged (used by config.py).

Every path setting is normalized before any rule looks at it (`//etc/./` is `/etc`), and the normalized
text is what the rest of the tool uses. The rules keep destructive steps (bind mount, `chown -R`,
`rsync --delete`, the launch script) away from the system: the deny lists below, the guide's driver mounts
(read from `container_spec.driver_mounts`, the one place that names them) and the training tree's own
layout. Each function raises ValueError with a sentence that says why; config.py adds host and setting.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import unicodedata

from llava_devserver.container_spec import driver_mounts

PACKAGE_TREE = "multimodal_algorithm"  # the AIGC zip's top directory that holds llava-train (the guide)

# Directories that may hold a workspace below them but are never one themselves.
SYSTEM_DIRS = frozenset(
    {
        "/", "/home", "/lost+found", "/media", "/mnt", "/opt", "/srv", "/tmp", "/usr", "/usr/local",
        "/usr/local/bin", "/usr/local/lib", "/usr/local/sbin", "/var", "/var/lib", "/var/log", "/var/tmp",
    }
)  # fmt: skip
# Trees that nothing of ours may be in, be, or contain (mounting or chown-ing any part breaks the server).
SYSTEM_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/lib*", "/proc", "/root", "/run", "/sbin", "/sys",
    "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libexec", "/usr/sbin",
    "/usr/share", "/usr/local/Ascend", "/var/lib/containerd", "/var/lib/docker", "/var/run",
)  # fmt: skip
# The host side of the guide's driver mounts, and where they appear in the container.
HOST_MOUNT_SOURCES = tuple(m.source.rstrip("/") for m in driver_mounts())
CONTAINER_MOUNT_TARGETS = tuple(m.target.rstrip("/") for m in driver_mounts())

_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


# ------------------------------------------------------------------------------------------- characters


def text_problem(value: str) -> str | None:
    """Why a value cannot be written into a command line, a file name or a script line, or None."""
    for char in value:
        if char == "\0":
            return "contains a NUL character"
        if char in "\n\r":
            return "contains a line break"
        if unicodedata.category(char) == "Cc" or char in "\u2028\u2029":
            return f"contains the control character {char!a}"
    return None


def check_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(f"{value!a} {problem}")
    return value


def check_name_text(value: str) -> str:
    """check_text, and no leading `-` (a command would read the value as an option)."""
    check_text(value)
    if value.startswith("-"):
        raise ValueError(f"{value!r} starts with '-' (a command would read it as an option)")
    return value


# ---------------------------------------------------------------------------------------------- paths


def normalize(value: str) -> str:
    """`//a/./b//c/.` -> `/a/b/c`; `./a//b/` -> `./a/b`; `.`, `./` -> `.`. `..` is kept (callers refuse it).

    Relative paths keep (or get) the `./` in front, so that `org/./name` never turns into the hub id
    `org/name`.
    """
    parts = [part for part in value.split("/") if part not in ("", ".")]
    if value.startswith("/"):
        return "/" + "/".join(parts)
    return "./" + "/".join(parts) if parts else "."


def check_path_text(value: str) -> str:
    """Any path setting: a non-empty string without control characters and no leading `-`."""
    if not value.strip():
        raise ValueError("must not be empty")
    return check_name_text(value)


def normalized_path(value: str, *, allow_dotdot: bool = False) -> str:
    check_path_text(value)
    if not allow_dotdot and ".." in value.split("/"):
        raise ValueError(f"{value!r} must not contain '..'")
    return normalize(value)


def _in_tree(path: str, tree: str) -> bool:
    """`path` is `tree` or inside it; a `*` may only end the first component (`/lib*`)."""
    if "*" in tree:
        return path != "/" and fnmatch.fnmatchcase("/" + path.split("/")[1], tree)
    return path == tree or path.startswith(tree + "/")


def inside(path: str, base: str) -> bool:
    """`path` is strictly inside `base` (both normalized and absolute)."""
    return path != base and (base == "/" or path.startswith(base + "/"))


def overlap(a: str, b: str) -> bool:
    """Equal, or one inside the other (normalized and absolute)."""
    return a == b or inside(a, b) or inside(b, a)


def protected_reason(
    path: str, *, container: bool, home: str | None = None, user: str | None = None
) -> str | None:
    """Why a normalized absolute path may not be a workspace (mounted, written, chown-ed), or None.

    `home`: in the container, the home of the image's `user`, which must not be mounted over. The clause
    follows the path in a sentence: "/etc is a system directory".
    """
    if path == "/":
        return "must not be / (the whole file system would be mounted and chown-ed)"
    if container and home is not None and path == home:
        return f"must not be {home}: the guide forbids mounting onto {user}'s home (breaks the image)"
    mounts = CONTAINER_MOUNT_TARGETS if container else HOST_MOUNT_SOURCES
    trees = [(tree, "a system directory") for tree in SYSTEM_TREES] + [
        (mount, "a system directory (the guide mounts it into the container for the NPU driver)")
        for mount in mounts
    ]
    for tree, what in trees:
        if _in_tree(path, tree):
            return f"is {what}" if path == tree else f"is inside {tree}, {what}"
    if path in SYSTEM_DIRS:
        return "is a system directory"
    for tree, what in trees:
        if "*" not in tree and inside(tree, path):
            return f"holds {tree}, {what}"
    return None


def check_workspace_path(value: str, *, home: str | None = None, user: str | None = None) -> str:
    """work_dir (host), or with `home` (of the image's `user`) container_work_dir: absolute, normalized,
    no `..`, nowhere near the system."""
    container = home is not None
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    path = normalized_path(value)
    reason = protected_reason(path, container=container, home=home, user=user)
    if reason and reason.startswith("must not be"):
        raise ValueError(reason if value == path else f"{value!r} (that is {path}) {reason}")
    if reason:
        example = f"{home}/ws" if container else "/data/llava"
        raise ValueError(f"{shown(value, path)} {reason}; use a directory of its own such as {example}")
    return path


def shown(value: str, path: str) -> str:
    """The value as written, and what it means when normalizing changed it: `'//etc' (that is /etc)`."""
    return path if value == path else f"{value!r} (that is {path})"


# ---------------------------------------------------------------------------------------------- names


def check_host_name(name: str) -> str:
    """An inventory host name: an IP address or dot-separated labels of letters, digits, `-` and `_`.

    It is written into comments of the launch script, file names (`render -o DIR/<host>`) and messages;
    `_` is allowed (common in inventories, harmless in those places), `/`, `..`, spaces and control
    characters are not.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("the inventory host name is empty")
    problem = text_problem(name)
    if problem:
        raise ValueError(f"the inventory host name {name!a} {problem}")
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"the inventory host name {name!r} is not a valid host name: use letters, digits, '-' and '_' in "
            "dot-separated labels (no '/', '..', spaces, or '-' at either end of a label)"
        )
    return name
