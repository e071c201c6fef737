"""The live display: the event reducer, the renderers (rich and plain), and the display in plain mode."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from llava_devserver.live import (
    FleetState,
    LiveDisplay,
    apply_event,
    overall_line,
    plain_line,
    progress_from_result,
    render_live,
    render_summary,
)


def ev(kind: str, **data: Any) -> dict[str, Any]:
    return {"event": kind, "event_data": data}


def run_events() -> list[dict[str, Any]]:
    """A short run on two hosts: ds-1 changes something and reports training progress, ds-2 fails."""
    return [
        ev("playbook_on_start", playbook="site.yml"),
        ev("playbook_on_play_start", name="Prepare the hosts", play="Prepare the hosts"),
        ev("playbook_on_task_start", task="Enable IPv4 forwarding", role="ip_forward"),
        ev("runner_on_start", host="ds-1", task="Enable IPv4 forwarding", role="ip_forward", play="Prepare"),
        ev("runner_on_start", host="ds-2", task="Enable IPv4 forwarding", role="ip_forward", play="Prepare"),
        ev(
            "runner_on_ok",
            host="ds-1",
            task="Enable IPv4 forwarding",
            role="ip_forward",
            res={"changed": True},
        ),
        ev(
            "runner_on_failed",
            host="ds-2",
            task="Check NPU health",
            role="npu_check",
            res={"msg": "NPU 3: health Critical: replace the card", "changed": False},
        ),
        ev(
            "runner_on_start",
            host="ds-1",
            task="Wait for the first step",
            role="llava_pretrain",
            play="Train",
        ),
        ev(
            "runner_retry",
            host="ds-1",
            task="Wait for the first step",
            res={"stdout": '{"llava_progress": {"step": 7, "loss": 2.5, "state": "running"}}'},
        ),
        ev(
            "runner_on_ok",
            host="ds-1",
            task="Publish the job",
            res={"ansible_facts": {"llava_report_job": {"step": 12, "loss": 1.875, "samples_per_s": 3.25}}},
        ),
        ev("runner_on_skipped", host="ds-1", task="Optional"),
        ev(
            "playbook_on_stats",
            ok={"ds-1": 2, "ds-2": 0},
            changed={"ds-1": 1},
            failures={"ds-2": 1},
            dark={},
            skipped={"ds-1": 1},
        ),
    ]


def test_reducer_follows_each_host() -> None:
    state = FleetState.for_hosts(["ds-1", "ds-2", "ds-3"])
    events = run_events()
    for event in events[:5]:
        apply_event(state, event)
    assert state.play == "Prepare the hosts" and state.tasks_started == 1
    assert state.hosts["ds-1"].status == "running"
    assert (state.hosts["ds-1"].role, state.hosts["ds-1"].task) == ("ip_forward", "Enable IPv4 forwarding")
    assert state.hosts["ds-3"].status == "pending"

    changed = apply_event(state, events[5])
    assert changed == ["ds-1"]
    assert (state.hosts["ds-1"].ok, state.hosts["ds-1"].changed) == (1, 1)
    assert state.hosts["ds-1"].changed_tasks == ["Enable IPv4 forwarding"]

    apply_event(state, events[6])
    assert state.hosts["ds-2"].status == "failed"
    assert state.hosts["ds-2"].message == "Check NPU health: NPU 3: health Critical: replace the card"

    apply_event(state, events[7])
    apply_event(state, events[8])  # an `until` retry that prints progress as JSON
    assert (state.hosts["ds-1"].step, state.hosts["ds-1"].loss) == (7, 2.5)
    assert state.hosts["ds-1"].job_state == "running"
    apply_event(state, events[9])  # the llava_report_job fact
    assert (state.hosts["ds-1"].step, state.hosts["ds-1"].loss) == (12, 1.875)
    assert state.hosts["ds-1"].samples_per_s == 3.25

    for event in events[10:]:
        apply_event(state, event)
    assert state.finished
    assert [h.status for h in state.hosts.values()] == ["changed", "failed", "not run"]
    assert state.hosts["ds-1"].skipped == 1


def test_unreachable_and_ignored_errors() -> None:
    state = FleetState()
    apply_event(state, ev("runner_on_failed", host="a", task="t", ignore_errors=True, res={"msg": "meh"}))
    apply_event(state, ev("runner_on_unreachable", host="b", task="Gather", res={"msg": "ssh: timed out"}))
    assert state.hosts["a"].status == "pending" and state.hosts["a"].ok == 1 and state.hosts["a"].failed == 0
    assert state.hosts["b"].status == "unreachable"
    assert "ssh: timed out" in state.hosts["b"].message


def test_retry_without_progress_changes_nothing() -> None:
    state = FleetState()
    assert apply_event(state, ev("runner_retry", host="a", task="t", res={"stdout": "not json"})) == []


def test_progress_sources() -> None:
    assert progress_from_result({"llava_progress": {"step": 1}}) == {"step": 1}
    assert progress_from_result({"ansible_facts": {"llava_progress": {"loss": 0.5}}}) == {"loss": 0.5}
    assert progress_from_result({"ansible_facts": {"llava_report_job": {"state": "finished"}}}) == {
        "state": "finished"
    }
    assert progress_from_result({"stdout": '{"llava_progress": {"step": 2}}'}) == {"step": 2}
    assert progress_from_result({"stdout": '{"llava_progress": broken'}) is None
    assert progress_from_result({"ansible_facts": {"llava_report_job": {"image": "x"}}}) is None


def finished_state() -> FleetState:
    state = FleetState.for_hosts(["ds-1", "ds-2"])
    state.started_at = 0.0
    for event in run_events():
        apply_event(state, event)
    state.ended_at = 83.0
    return state


def test_rich_render_shows_every_host_and_its_job() -> None:
    console = Console(record=True, width=160, color_system=None)
    console.print(render_live(finished_state()))
    text = console.export_text()
    lines = text.splitlines()
    ds1 = next(line for line in lines if line.startswith("ds-1"))
    ds2 = next(line for line in lines if line.startswith("ds-2"))
    assert "changed" in ds1 and "step 12" in ds1 and "loss 1.8750" in ds1
    assert "failed" in ds2 and "NPU 3: health Critical" in ds2
    assert "finished | 4 task results on 2 hosts | 1 failed/unreachable | 01:23" in text


def test_rich_render_running_shows_current_task_and_colours() -> None:
    state = FleetState.for_hosts(["ds-1"])
    apply_event(state, ev("playbook_on_play_start", name="Prepare the hosts"))
    apply_event(state, ev("runner_on_start", host="ds-1", task="Install Docker", role="docker_engine"))
    console = Console(record=True, width=120, force_terminal=True, color_system="standard")
    console.print(render_live(state, now=state.started_at + 5))
    assert "docker_engine / Install Docker" in console.export_text(clear=False)
    assert "\x1b[36mrunning" in console.export_text(styles=True)  # cyan while it runs
    assert "play 1: Prepare the hosts" in overall_line(state, now=state.started_at + 5)


def test_summary_table_has_a_row_per_host_with_the_reason() -> None:
    console = Console(record=True, width=160, color_system=None)
    console.print(render_summary(finished_state()))
    text = console.export_text()
    assert "Fleet summary" in text
    assert any("ds-1" in line and "ok=2 changed=1 skipped=1" in line for line in text.splitlines())
    assert any(
        "ds-2" in line and "failed=1" in line and "Check NPU health" in line for line in text.splitlines()
    )


def test_plain_line() -> None:
    state = finished_state()
    assert plain_line(state.hosts["ds-1"]) == (
        "ds-1 changed [Train] ok=2 changed=1 failed=0 job: running step 12 loss 1.8750 3.2 samples/s"
    )
    assert plain_line(state.hosts["ds-2"]).startswith("ds-2 failed Check NPU health: NPU 3")


def test_plain_display_prints_only_changes() -> None:
    out = io.StringIO()
    display = LiveDisplay(["ds-1", "ds-2"], console=Console(file=out, width=200), live=None)
    assert not display.live_mode  # a StringIO is no terminal
    with display:
        for event in run_events():
            display.on_event(event)
    display.print_summary()
    lines = out.getvalue().splitlines()
    # Each host: started, then one line per change of role/status/step; no line for an unchanged state.
    assert lines[0] == "ds-1 running [ip_forward / Enable IPv4 forwarding] ok=0 changed=0 failed=0"
    assert sum(1 for line in lines if line.startswith("ds-2 failed")) == 2  # the failure, then the summary
    assert (
        "ds-1 running [llava_pretrain / Wait for the first step] ok=1 changed=1 failed=0 "
        "job: running step 7 loss 2.5000" in lines
    )
    assert lines[-1].startswith("finished | 4 task results on 2 hosts | 1 failed/unreachable")
    assert "SUMMARY" in lines
