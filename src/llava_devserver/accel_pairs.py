"""The rerun of the readiness check by pairs of servers: which server makes the fleet-wide all_reduce slow or
fail (the role accel_check; DLRover's node check and the GPU fleets' pairwise nccl-tests do the same).

A slow or broken server slows or breaks every collective it is in: the fleet-wide all_reduce gives one
figure for all its processes, so it cannot say who. When that all_reduce failed or was below
`accel_check_min_busbw_gbs` on 3 servers or more, the role reruns the check on pairs of servers, in rounds (a
server is in at most one pair per round, so that pairs never compete for its devices or ports):

- `classify`: a server in a passing pair is **healthy**; a server that failed in a pair with a healthy server
  is **slow** (it is the slow one in every pair it is in); any other server is **uncleared**;
- `plan_round`: each uncleared server with a healthy one not yet tried with it (each healthy server once a
  round), the others with each other, never the same pair twice; no pair left: done. One slow server among
  N >= 3 is named within 3 rounds (2 on an even fleet of 4 or more), hence the default of 3.
- `pairwise_outcome`: the slow servers fail by name (with their pairs' figures), the healthy ones pass (their
  own problems aside), uncleared ones keep the fleet-wide failure; when no server is found slow (every pair
  passed: the collective is slow only at the fleet's scale; or nothing was cleared) every server keeps it.

Pure functions on plain data, unit-tested in tests/unit/test_accel_pairs.py; the filters of the role are in
plugins/filter/accel_check.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llava_devserver import accel_launch
from llava_devserver.payloads.accel_check import summary_line

HEALTHY = "healthy"
SLOW = "slow"
UNCLEARED = "uncleared"
# The fleet-wide collective statuses (accel_launch.collective_status) that call for the rerun by pairs.
SUSPECT = ("slow", "failed")
MIN_SERVERS = 3


def pair_json_out(json_out: str) -> str:
    """Where a pair run writes its document in the container (the fleet-wide document stays)."""
    stem, dot, ext = json_out.rpartition(".")
    return f"{stem}-pair.{ext}" if dot and "/" not in ext else f"{json_out}-pair"


def merge_records(records_by_host: Sequence[Sequence[Mapping[str, Any]] | None]) -> list[dict[str, Any]]:
    """One record per pair and round, from what each server recorded of its own pairs (both servers of a pair
    record it): a pair passed only when every record of it says so; figures from the first record."""
    merged: dict[tuple[int, tuple[str, ...]], dict[str, Any]] = {}
    for records in records_by_host:
        for record in records or []:
            if not isinstance(record, Mapping):
                continue
            key = (int(record["round"]), tuple(str(n) for n in record["nodes"]))
            if key in merged:
                merged[key]["passed"] = bool(merged[key]["passed"] and record.get("passed"))
            else:
                merged[key] = {**record, "nodes": list(key[1]), "passed": bool(record.get("passed"))}
    return [merged[key] for key in sorted(merged)]


def classify(nodes: Sequence[str], records: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each server of the run: healthy, slow or uncleared (see the module's rules)."""
    status = dict.fromkeys(nodes, UNCLEARED)
    for record in records:
        if record.get("passed"):
            for node in record["nodes"]:
                status[node] = HEALTHY
    for record in records:
        if record.get("passed"):
            continue
        pair = list(record["nodes"])
        for node, partner in ((pair[0], pair[1]), (pair[1], pair[0])):
            if status.get(partner) == HEALTHY and status.get(node) == UNCLEARED:
                status[node] = SLOW
    return status


def plan_round(nodes: Sequence[str], records: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The pairs of the next round (each in node order), or [] when nothing is left to learn."""
    order = {node: index for index, node in enumerate(nodes)}
    status = classify(nodes, records)
    tried = {frozenset(record["nodes"]) for record in records}
    uncleared = [n for n in nodes if status[n] == UNCLEARED]
    healthy = [n for n in nodes if status[n] == HEALTHY]
    used: set[str] = set()
    pairs: list[tuple[str, str]] = []

    def take(a: str, b: str) -> None:
        first, second = sorted((a, b), key=order.__getitem__)
        pairs.append((first, second))
        used.update((a, b))

    for node in uncleared:
        partner = next((h for h in healthy if h not in used and frozenset((node, h)) not in tried), None)
        if partner is not None:
            take(node, partner)
    rest = [n for n in uncleared if n not in used]
    for index, node in enumerate(rest):
        if node in used:
            continue
        partner = next(
            (o for o in rest[index + 1 :] if o not in used and frozenset((node, o)) not in tried), None
        )
        if partner is not None:
            take(node, partner)
    return sorted(pairs, key=lambda pair: order[pair[0]])


def pairs_needed(nodes: Sequence[str], outcomes: Sequence[Mapping[str, Any] | None]) -> bool:
    """The fleet-wide all_reduce failed or was too slow on some server of a run of 3 servers or more."""
    suspect = any(isinstance(o, Mapping) and o.get("collective") in SUSPECT for o in outcomes)
    return suspect and len(nodes) >= MIN_SERVERS


def pair_plan(
    llava: Mapping[str, Any],
    round_no: int,
    nodes: Sequence[str],
    peers: Sequence[Mapping[str, Any]],
    outcomes: Sequence[Mapping[str, Any] | None],
    records_by_host: Sequence[Sequence[Mapping[str, Any]] | None],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """This server's part in round `round_no`: `{round, active, pair, partner, launch}`; `launch` is the
    `accel_launch.check_plan` of the pair (the fleet-wide options; no fault injection, its own document)."""
    host = str(llava.get("host"))
    idle: dict[str, Any] = {"round": round_no, "active": False, "pair": None, "partner": None, "launch": None}
    if not pairs_needed(nodes, outcomes):
        return idle
    pairs = plan_round(list(nodes), merge_records(records_by_host))
    mine = next((pair for pair in pairs if host in pair), None)
    if mine is None:
        return idle
    partner = mine[1] if mine[0] == host else mine[0]
    partner_llava = next((p for p in peers if isinstance(p, Mapping) and p.get("host") == partner), None)
    if partner_llava is None:
        raise accel_launch.AccelPlanError(f"{host}: the settings of {partner} are not in this play")
    launch_options = {**options, "fault": "", "json_out": pair_json_out(str(options["json_out"]))}
    launch = accel_launch.check_plan(llava, [partner_llava], **launch_options)
    return {"round": round_no, "active": True, "pair": list(mine), "partner": partner, "launch": launch}


def pair_record(outcome: Mapping[str, Any], pair: Mapping[str, Any]) -> dict[str, Any]:
    """What this server records of its pair's run (`outcome`: accel_launch.check_result of the pair launch):
    the pair passes when its all_reduce completed at or above the minimum (the devices are judged by the
    fleet-wide run)."""
    report = outcome.get("report") or {}
    allreduce = report.get("allreduce") if isinstance(report.get("allreduce"), Mapping) else {}
    job_problems = [str(p) for p in report.get("job_problems") or []]
    problems = job_problems or [str(p) for p in report.get("problems") or []]
    record = {
        "round": int(pair["round"]),
        "nodes": list(pair["pair"]),
        "passed": outcome.get("collective") == "ok",
        "collective": outcome.get("collective"),
        "busbw_gbps": allreduce.get("busbw_gbps") if allreduce else None,
        "min_busbw_gbps": allreduce.get("min_busbw_gbps") if allreduce else None,
        "problem": problems[0] if problems and outcome.get("collective") != "ok" else None,
        "seconds": (report.get("run") or {}).get("seconds"),
    }
    record["summary"] = f"{describe(record)}: {'passed' if record['passed'] else 'FAILED'}" + (
        f" ({record['problem']})" if record["problem"] else ""
    )
    return record


def describe(record: Mapping[str, Any]) -> str:
    """`devserver-1+devserver-2 0.0041 GB/s (round 1)`, or `... failed (round 1)`."""
    figure = (
        f"{record['busbw_gbps']:.3g} GB/s" if isinstance(record.get("busbw_gbps"), (int, float)) else "failed"
    )
    return f"{'+'.join(record['nodes'])} {figure} (round {record['round']})"


def _fleet_figure(report: Mapping[str, Any]) -> str:
    allreduce = report.get("allreduce") if isinstance(report.get("allreduce"), Mapping) else None
    if not allreduce or allreduce.get("busbw_gbps") is None:
        return "the fleet-wide all_reduce failed"
    floor = allreduce.get("min_busbw_gbps")
    return (
        f"the fleet-wide all_reduce bus bandwidth {allreduce['busbw_gbps']:.3g} GB/s is below the minimum "
        f"{floor:g} GB/s"
        if floor
        else f"the fleet-wide all_reduce bus bandwidth is {allreduce['busbw_gbps']:.3g} GB/s"
    )


def pairwise_outcome(
    outcome: Mapping[str, Any],
    host: str,
    nodes: Sequence[str],
    outcomes: Sequence[Mapping[str, Any] | None],
    records_by_host: Sequence[Sequence[Mapping[str, Any]] | None],
    max_rounds: int,
) -> dict[str, Any]:
    """This server's outcome once the pairs have run (`accel_launch.check_result`'s shape): the report gains
    `pairs` `{rounds, results, servers, slow}` and the verdict follows the module's rules."""
    if not pairs_needed(nodes, outcomes):
        return dict(outcome)
    records = merge_records(records_by_host)
    status = classify(nodes, records)
    slow = [n for n in nodes if status[n] == SLOW]
    report: dict[str, Any] = dict(outcome.get("report") or {})
    rounds = max((int(r["round"]) for r in records), default=0)
    report["pairs"] = {"rounds": rounds, "results": records, "servers": status, "slow": slow}
    if max_rounds < 1:
        report["pairs"]["skipped"] = "accel_check_pair_rounds is 0"
    mine = [r for r in records if host in r["nodes"]]
    scope = accel_launch.run_scope(report.get("run") or {})
    fleet = _fleet_figure(report)
    job = {str(p) for p in report.get("job_problems") or []}
    own = [str(p) for p in report.get("problems") or [] if str(p) not in job]

    if not slow:
        if max_rounds < 1:
            note = "The rerun by pairs of servers is off (accel_check_pair_rounds: 0)."
        elif records and all(r["passed"] for r in records):
            note = (
                f"Every pair of servers passed ({'; '.join(describe(r) for r in records)}): the all_reduce "
                f"is slow or fails only with all {len(nodes)} servers together; look at the network between "
                "them at scale (switches, congestion, HCCL's settings in train_env)."
            )
        else:
            note = "The rerun by pairs of servers could not tell which server it is" + (
                f" ({'; '.join(describe(r) for r in records)})." if records else "."
            )
        report["summary"] = f"{report.get('summary', '')}; rerun by pairs: no single server found"
        return {**outcome, "report": report, "message": _with_note(str(outcome.get("message") or ""), note)}

    # Below the minimum on some server: a slow one; no figure anywhere (failed, timed out): a broken one.
    found = (
        "slow"
        if any(isinstance(o, Mapping) and o.get("collective") == "slow" for o in outcomes)
        else "broken"
    )
    named = ", ".join(slow)
    if status[host] == SLOW:
        cause = f"{found} server"
        with_it = "; ".join(describe(r) for r in mine if not r["passed"])
        without = [r for r in records if r["passed"] and host not in r["nodes"]]
        problem = f"{host} is {found} in every pair it is in: {with_it}" + (
            f"; pairs without it pass: {'; '.join(describe(r) for r in without)}" if without else ""
        )
        detail = next((r["problem"] for r in mine if r.get("problem")), None)
        report.update(problems=[problem, *own], verdict="FAIL")
        notes = [f"{fleet[0].upper()}{fleet[1:]}; the rerun by pairs of servers names {named}."]
        if detail:
            notes.append(f"Its pair run says: {detail}")
        report["summary"] = f"{_summary(report)}; rerun by pairs: {named} {found}"
        cause, message = accel_launch.document_failure(
            host, report, [problem, *own], scope, cause=cause, notes=notes
        )
        return {**outcome, "failed": True, "cause": cause, "message": message, "report": report}

    if status[host] == UNCLEARED:
        note = f"The rerun by pairs of servers names {named} but could not clear {host}" + (
            f" ({'; '.join(describe(r) for r in mine)})." if mine else " (it was in no pair)."
        )
        report["summary"] = f"{report.get('summary', '')}; rerun by pairs: {named} {found}, {host} uncleared"
        return {**outcome, "report": report, "message": _with_note(str(outcome.get("message") or ""), note)}

    # Healthy: the fleet-wide collective problem is the slow server's, not this one's.
    report.update(problems=own, verdict="FAIL" if own else "PASS")
    report["summary"] = f"{_summary(report)}; rerun by pairs: {named} {found}"
    if not own:
        return {**outcome, "failed": False, "cause": None, "message": "", "report": report}
    cause, message = accel_launch.document_failure(host, report, own, scope)
    return {**outcome, "failed": True, "cause": cause, "message": message, "report": report}


def _summary(report: Mapping[str, Any]) -> str:
    """The one-line verdict of a report whose verdict or problems changed (no document: its first problem)."""
    if "devices" in report:
        return summary_line(dict(report))
    problems = report.get("problems") or []
    detail = problems[0] if problems else "no result of the fleet-wide run"
    return f"accel-check {report.get('verdict')} {report.get('host')}: {detail}"


def _with_note(message: str, note: str) -> str:
    """The fleet-wide failure message with a line about the pairs before its `What to do`."""
    lines = message.splitlines()
    at = next((i for i, line in enumerate(lines) if line.startswith("What to do: ")), len(lines))
    return "\n".join([*lines[:at], note, *lines[at:]])
