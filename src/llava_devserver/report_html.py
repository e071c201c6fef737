"""`report.html`: the fleet report as one self-contained page (images embedded), beside report.md.

The run's context (the header), the table of report.md, every failure message whole, the loss curve
(loss.png, embedded), a chart of each host's time by role, and the readiness figures of the accelerator
check per host. Built from the report dict of `llava_devserver.report.build_report`; nothing is fetched
when the page is opened, so it can be attached to a ticket as it is.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
.ok, .changed { color: #176f2c; } .failed, .unreachable { color: #b00020; font-weight: bold; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 0.6em; border: 1px solid #ddd; }
img { max-width: 100%; }
"""
CONTEXT_LABELS = (
    ("check_mode", "Check mode"),
    ("command", "Command"),
    ("playbook", "Playbook"),
    ("limit", "Limit"),
    ("tags", "Tags"),
    ("skip_tags", "Skipped tags"),
    ("tool_version", "llava-devserver"),
    ("ansible_core", "ansible-core"),
    ("world_size", "World size"),
    ("global_batch_size", "Global batch"),
    ("container_image", "Image"),
)


def context_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) of the header, the run's times first; only what is known."""
    context = dict(report.get("context") or {})
    context.setdefault("playbook", report.get("playbook"))
    rows = [("Result", str(report.get("result"))), ("Started", str(report.get("started") or "–"))]
    rows.append(("Finished", str(report.get("finished") or "–")))
    for key, label in CONTEXT_LABELS:
        value = context.get(key)
        if value in (None, "", []):
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, list | tuple):
            value = ", ".join(str(v) for v in value)
        rows.append((label, str(value)))
    return rows


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def timing_chart(hosts: Sequence[Mapping[str, Any]]) -> bytes | None:
    """A horizontal stacked bar per host: seconds spent in each role (PNG), None without timings."""
    timed = [(h["host"], h.get("seconds_by_role") or {}) for h in hosts if h.get("seconds_by_role")]
    if not timed:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = list(dict.fromkeys(role for _, seconds in timed for role in seconds))
    figure, axes = plt.subplots(figsize=(8, 1.2 + 0.45 * len(timed)))
    left = [0.0] * len(timed)
    names = [host for host, _ in timed]
    for role in roles:
        widths = [float(seconds.get(role, 0.0)) for _, seconds in timed]
        axes.barh(names, widths, left=left, label=role)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    axes.invert_yaxis()
    axes.set_xlabel("seconds")
    axes.set_title("Time per host by role")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(4, len(roles)), fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def readiness_rows(hosts: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Per host with an accelerator check: accelerator, devices, matmul TFLOP/s, all_reduce GB/s, verdict."""
    rows = []
    for entry in hosts:
        accel = (entry.get("facts") or {}).get("accel")
        if not isinstance(accel, Mapping):
            continue
        allreduce = accel.get("allreduce") if isinstance(accel.get("allreduce"), Mapping) else {}
        busbw = allreduce.get("busbw_gbps") if allreduce else None
        tflops = accel.get("tflops_median")
        rows.append(
            [
                str(entry["host"]),
                str(accel.get("accelerator") or "–"),
                str(accel.get("device_count") if accel.get("device_count") is not None else "–"),
                f"{tflops:.3g}" if isinstance(tflops, int | float) else "–",
                f"{busbw:.3g}" if isinstance(busbw, int | float) else "–",
                str(accel.get("verdict") or "–"),
            ]
        )
    return rows


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()) -> str:
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
    for index, row in enumerate(rows):
        css = f' class="{classes[index]}"' if index < len(classes) and classes[index] else ""
        out.append(f"<tr{css}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def render_html(
    report: Mapping[str, Any], run_dir: Path, columns: Sequence[str], rows: Sequence[Sequence[str]]
) -> str:
    """The page; `columns`/`rows` are report.md's table (the same cells, unescaped)."""
    hosts = list(report.get("hosts") or [])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Fleet report {html.escape(str(report.get('run')))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Fleet report {html.escape(str(report.get('run')))}</h1>",
        _table((), context_rows(report)),
        "<h2>Servers</h2>",
        _table(columns, rows, [str(h.get("status") or "") for h in hosts]),
    ]
    failures = [h for h in hosts if (h.get("failed_task") or {}).get("message")]
    if failures:
        parts.append("<h2>Messages</h2>")
        for entry in failures:
            failed = entry["failed_task"]
            task = f"{failed['role']} : {failed['task']}" if failed.get("role") else failed["task"]
            parts.append(f"<h3>{html.escape(entry['host'])}: {html.escape(str(task))}</h3>")
            parts.append(f"<pre>{html.escape(str(failed['message']))}</pre>")
    loss = run_dir / str(report.get("loss_png") or "")
    if report.get("loss_png") and loss.is_file():
        parts += ["<h2>Loss</h2>", f'<img alt="Training loss" src="{_png(loss.read_bytes())}">']
    chart = timing_chart(hosts)
    if chart is not None:
        parts += ["<h2>Time by role</h2>", f'<img alt="Time per host by role" src="{_png(chart)}">']
    readiness = readiness_rows(hosts)
    if readiness:
        head = (
            "Host",
            "Accelerator",
            "Devices",
            "matmul TFLOP/s (median)",
            "all_reduce busbw GB/s",
            "Verdict",
        )
        parts += ["<h2>Readiness</h2>", _table(head, readiness)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
