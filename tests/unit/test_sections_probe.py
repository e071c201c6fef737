"""A role's one probe (llava_devserver.sections): the shell function and the parser of what it prints."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ansible_collections.llava.devserver.plugins.filter.probe import (
    llava_root_dirs_due,
    llava_root_dirs_probe,
)

from llava_devserver.sections import PROBE_FUNCTION, card_sections, probe_results


def _probe(script: str) -> str:
    return subprocess.run(["sh", "-c", f"{PROBE_FUNCTION}\n{script}"], capture_output=True, text=True).stdout


def test_each_command_gives_its_exit_status_and_output_without_trailing_newlines() -> None:
    out = _probe(
        "probe plain echo hello\n"
        "probe no_newline sh -c 'printf partial; exit 3'\n"
        "probe empty true\n"
        "probe missing no-such-tool-here 2>/dev/null\n"
    )
    assert probe_results(out) == {
        "plain": {"rc": 0, "stdout": "hello"},
        "no_newline": {"rc": 3, "stdout": "partial"},
        "empty": {"rc": 0, "stdout": ""},
        "missing": {"rc": 127, "stdout": ""},
    }


def test_rc_is_left_for_the_script_and_inner_sections_stay_in_the_body() -> None:
    out = _probe(
        "probe first sh -c 'exit 4'\n"
        'if [ "$rc" = 4 ]; then\n'
        '  probe cards sh -c \'for n in 0 1; do echo "### card $n ecc"; echo "n=$n"; done\'\n'
        "fi\n"
    )
    results = probe_results(out)
    assert results["first"]["rc"] == 4
    assert card_sections(str(results["cards"]["stdout"]), "ecc") == {0: "n=0", 1: "n=1"}


def test_a_command_cut_off_before_its_end_marker_is_left_out() -> None:
    text = "#### begin done\nok\n\n#### end done 0\n#### begin cut\nhalf a line"
    assert probe_results(text) == {"done": {"rc": 0, "stdout": "ok"}}
    assert probe_results("") == {}
    # an end marker of another name does not close the section, and text outside any section is dropped
    assert probe_results("noise\n#### begin a\nx\n#### end b 0\ny\n#### end a 1\n") == {
        "a": {"rc": 1, "stdout": "x\n#### end b 0\ny"}
    }


def test_root_dirs_due_lists_what_is_missing_a_link_or_not_root_only(tmp_path: Path) -> None:
    good, loose, target = tmp_path / "good", tmp_path / "loose", tmp_path / "target"
    for path in (good, loose, target):
        path.mkdir()
    good.chmod(0o700)
    loose.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(target)
    dirs = [str(good), str(loose), str(link), str(tmp_path / "missing")]
    out = subprocess.run(llava_root_dirs_probe(dirs), capture_output=True, text=True)
    assert out.returncode != 0  # the missing one
    owner = subprocess.run(["stat", "-c", "%U:%G", str(good)], capture_output=True, text=True).stdout.strip()
    due = llava_root_dirs_due(dirs, out.stdout.splitlines())
    # only a root:root 0700 directory is left alone (the test may run as another user: then all are due)
    assert due == (dirs[1:] if owner == "root:root" else dirs)
    assert llava_root_dirs_due(dirs, [f"root:root:700:directory {path}" for path in dirs]) == []


def test_stat_from_kinds_reads_what_the_container_probe_prints(tmp_path: Path) -> None:
    from ansible_collections.llava.devserver.plugins.filter.probe import llava_stat_from_kinds

    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").touch()
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "none")
    names = ["file", "empty", "dir", "link", "dangling", "none"]
    script = 'for path; do stat -L -c %F -- "$path" 2>/dev/null || echo missing; done'
    out = subprocess.run(
        ["sh", "-c", script, "sh", *(str(tmp_path / name) for name in names)], capture_output=True, text=True
    )
    stats = llava_stat_from_kinds(out.stdout.splitlines())
    assert [(s["exists"], s["isdir"], s["isreg"]) for s in stats] == [
        (True, False, True),
        (True, False, True),
        (True, True, False),
        (True, False, True),  # followed, as stat's follow: true
        (False, False, False),
        (False, False, False),
    ]
