"""The rerun of the readiness check by pairs of servers (llava_devserver.accel_pairs): which pairs run in each
round, which server is named slow or broken, and the outcome each server ends with.

The simulations below are as unkind as a real cluster: a slow server slows every collective it is in, on
every rank, so a pair is slow exactly when it holds a slow server (the fleet-wide figure says nothing about
who).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from ansible_collections.llava.devserver.plugins.filter import accel_check as accel_filter

from llava_devserver import accel_launch, accel_pairs
from llava_devserver.config import validate_fleet
from llava_devserver.payloads import accel_check
from llava_devserver.report import verdict_cell

HOSTS = [f"devserver-{i}" for i in range(1, 9)]
OPTIONS = {
    "script": "/tmp/llava_accel_check.py",
    "json_out": "/tmp/llava_accel_check.json",
    "expect_accelerator": "npu",
    "min_busbw_gbs": 10.0,
    "fault": "stall:1",
}
MIN_BUSBW = 10.0


def simulate(
    nodes: Sequence[str], passes: Callable[[tuple[str, str]], bool], max_rounds: int = 10
) -> tuple[list[dict[str, Any]], list[list[tuple[str, str]]]]:
    """Run the rounds as the role does until no pair is left: (records, pairs of each round)."""
    records: list[dict[str, Any]] = []
    rounds: list[list[tuple[str, str]]] = []
    for round_no in range(1, max_rounds + 1):
        pairs = accel_pairs.plan_round(nodes, records)
        if not pairs:
            break
        rounds.append(pairs)
        members = [node for pair in pairs for node in pair]
        assert len(members) == len(set(members)), f"a server in two pairs of round {round_no}: {pairs}"
        for pair in pairs:
            ok = passes(pair)
            records.append(
                {"round": round_no, "nodes": list(pair), "passed": ok, "busbw_gbps": 20.0 if ok else 0.5}
            )
    tried = [frozenset(r["nodes"]) for r in records]
    assert len(tried) == len(set(tried)), "the same pair ran twice"
    return records, rounds


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_the_first_round_pairs_neighbours(n: int) -> None:
    nodes = HOSTS[:n]
    expected = [(nodes[i], nodes[i + 1]) for i in range(0, n - 1, 2)]
    assert accel_pairs.plan_round(nodes, []) == expected


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 8, 16])
def test_one_slow_server_is_named_within_three_rounds(n: int) -> None:
    nodes = [f"devserver-{i}" for i in range(1, n + 1)]
    for slow in nodes:
        records, rounds = simulate(nodes, lambda pair, slow=slow: slow not in pair)  # type: ignore[misc]
        status = accel_pairs.classify(nodes, records)
        assert status == {node: "slow" if node == slow else "healthy" for node in nodes}, (slow, rounds)
        # two rounds when the fleet is even and the slow server's partner of round 1 clears in round 2; three
        # at most (the default of accel_check_pair_rounds)
        assert len(rounds) <= 3, (slow, rounds)
        if n % 2 == 0 and n > 3:
            assert len(rounds) == 2, (slow, rounds)


def test_the_rounds_for_a_slow_second_server_of_three() -> None:
    nodes = HOSTS[:3]
    _, rounds = simulate(nodes, lambda pair: "devserver-2" not in pair)
    # round 1: the first two (slow); round 2: one of them with the one left, which passes, so the other is
    # the slow one without running it with devserver-3
    assert rounds == [[("devserver-1", "devserver-2")], [("devserver-1", "devserver-3")]]


def test_two_slow_servers_are_both_named() -> None:
    nodes = HOSTS[:4]
    records, _ = simulate(nodes, lambda pair: not {"devserver-1", "devserver-2"} & set(pair))
    assert accel_pairs.classify(nodes, records) == {
        "devserver-1": "slow", "devserver-2": "slow", "devserver-3": "healthy", "devserver-4": "healthy",
    }  # fmt: skip


def test_nothing_is_named_when_every_pair_passes_or_every_pair_fails() -> None:
    nodes = HOSTS[:3]
    passing, _ = simulate(nodes, lambda pair: True)
    assert set(accel_pairs.classify(nodes, passing).values()) == {"healthy"}
    failing, rounds = simulate(nodes, lambda pair: False)
    assert len(rounds) == 3  # all three pairs, then nothing is left to try
    assert set(accel_pairs.classify(nodes, failing).values()) == {"uncleared"}


def test_records_of_both_servers_merge_and_a_disagreement_fails_the_pair() -> None:
    one = [{"round": 1, "nodes": ["devserver-1", "devserver-2"], "passed": True, "busbw_gbps": 20.0}]
    two = [{"round": 1, "nodes": ["devserver-1", "devserver-2"], "passed": False, "busbw_gbps": None}]
    three: list[dict[str, Any]] = []
    merged = accel_pairs.merge_records([one, two, three, None])
    assert merged == [
        {"round": 1, "nodes": ["devserver-1", "devserver-2"], "passed": False, "busbw_gbps": 20.0}
    ]
    assert accel_pairs.merge_records([one, one]) == one


def test_pair_json_out() -> None:
    assert accel_pairs.pair_json_out("/tmp/llava_accel_check.json") == "/tmp/llava_accel_check-pair.json"
    assert accel_pairs.pair_json_out("/tmp/x.d/result") == "/tmp/x.d/result-pair"


# ---- the launches of a round -------------------------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> list[dict[str, Any]]:
    package = tmp_path / "AscendCloud-6.3.906.zip"
    package.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    settings = {
        "ascendcloud_package": str(package), "npu_devices": "0-7", "global_batch_size": 24,
        "per_device_train_batch_size": 1,
    }  # fmt: skip
    raw = {HOSTS[i]: {**settings, "ansible_host": f"192.168.0.{10 + i}"} for i in range(3)}
    return [host.to_vars() for host in validate_fleet(raw).hosts]


def _torchrun(plan: dict[str, Any]) -> list[str]:
    line = next(line for line in plan["argv"][-1].splitlines() if line.startswith("timeout "))
    return shlex.split(line.rstrip(" &"))


def _arg(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


SLOW = {"collective": "slow"}
OK = {"collective": "ok"}


def test_pair_plan_runs_the_pair_as_a_two_server_check(fleet: list[dict[str, Any]]) -> None:
    nodes = [llava["host"] for llava in fleet]
    first = accel_pairs.pair_plan(fleet[0], 1, nodes, fleet, [SLOW] * 3, [[], [], []], OPTIONS)
    assert first["active"] and first["pair"] == ["devserver-1", "devserver-2"]
    assert first["partner"] == "devserver-2"
    argv = _torchrun(first["launch"])
    assert _arg(argv, "--nnodes") == "2" and _arg(argv, "--node_rank") == "0"
    assert _arg(argv, "--master_addr") == "192.168.0.10" and _arg(argv, "--master_port") == "29501"
    assert _arg(argv, "--min-busbw") == "10"
    assert _arg(argv, "--json-out") == "/tmp/llava_accel_check-pair.json"
    assert not any(a.startswith("ACCEL_CHECK_FAULT=") for a in first["launch"]["argv"])  # fleet-wide only
    assert first["launch"]["nodes"] == ["devserver-1", "devserver-2"]

    idle = accel_pairs.pair_plan(fleet[2], 1, nodes, fleet, [SLOW] * 3, [[], [], []], OPTIONS)
    assert idle == {"round": 1, "active": False, "pair": None, "partner": None, "launch": None}

    # round 2 after a slow first pair: devserver-3 with devserver-1, which leads the pair
    records = [[{"round": 1, "nodes": ["devserver-1", "devserver-2"], "passed": False}]] * 2 + [[]]
    third = accel_pairs.pair_plan(fleet[2], 2, nodes, fleet, [SLOW] * 3, records, OPTIONS)
    assert third["pair"] == ["devserver-1", "devserver-3"]
    argv = _torchrun(third["launch"])
    assert _arg(argv, "--node_rank") == "1" and _arg(argv, "--master_addr") == "192.168.0.10"


def test_a_pair_without_the_first_server_meets_at_its_first_server(fleet: list[dict[str, Any]]) -> None:
    nodes = [llava["host"] for llava in fleet]
    records = [
        {"round": 1, "nodes": ["devserver-1", "devserver-2"], "passed": False},
        {"round": 2, "nodes": ["devserver-1", "devserver-3"], "passed": False},
    ]
    plan = accel_pairs.pair_plan(fleet[2], 3, nodes, fleet, [SLOW] * 3, [records, [], []], OPTIONS)
    assert plan["pair"] == ["devserver-2", "devserver-3"]
    argv = _torchrun(plan["launch"])
    assert _arg(argv, "--node_rank") == "1" and _arg(argv, "--master_addr") == "192.168.0.11"


def test_no_pairs_unless_the_fleet_wide_collective_failed_on_three_servers(
    fleet: list[dict[str, Any]],
) -> None:
    nodes = [llava["host"] for llava in fleet]
    assert not accel_pairs.pair_plan(fleet[0], 1, nodes, fleet, [OK] * 3, [[]] * 3, OPTIONS)["active"]
    assert accel_pairs.pair_plan(
        fleet[0], 1, nodes, fleet, [OK, {"collective": "failed"}, OK], [[]] * 3, OPTIONS
    )["active"]
    assert not accel_pairs.pairs_needed(nodes[:2], [SLOW, SLOW])


def test_the_filter_takes_the_role_options(fleet: list[dict[str, Any]]) -> None:
    nodes = [llava["host"] for llava in fleet]
    options = {**OPTIONS, "timeout_s": "60", "min_busbw_gbs": "10", "master_port": ""}
    plan = accel_filter.accel_check_pair_plan(fleet[1], "1", nodes, fleet, [SLOW] * 3, [[]] * 3, options)
    assert (
        plan["pair"] == ["devserver-1", "devserver-2"]
        and _arg(_torchrun(plan["launch"]), "--timeout") == "60"
    )


# ---- documents and outcomes --------------------------------------------------------------------------------


def _rank(rank: int, host: str) -> dict[str, Any]:
    return {
        "rank": rank, "local_rank": 0, "node_rank": rank, "host": host, "accelerator": "npu",
        "versions": {"torch": "2.1.0"},
        "launch": {"rank": rank, "world_size": 3, "local_rank": 0, "local_world_size": 1, "node_rank": rank,
                   "nnodes": 3, "launcher": "torchrun"},
        "device_count": 1,
        "devices": [{"index": 0, "rank": rank, "host": host, "node_rank": rank, "tflops": 290.0,
                     "mem_free_mb": 60000, "mem_total_mb": 65536, "outlier": False, "error": None}],
        "problems": [], "warnings": [],
    }  # fmt: skip


def _allreduce(busbw: float | None, world_size: int = 3) -> dict[str, Any]:
    return {
        "backend": "hccl", "world_size": world_size, "size_mb": 64.0, "iterations": 5,
        "algbw_gbps": None if busbw is None else busbw / 2, "busbw_gbps": busbw, "min_busbw_gbps": MIN_BUSBW,
        "ok": busbw is not None,
    }  # fmt: skip


def _outcome(host: str, hosts: Sequence[str], busbw: float | None) -> dict[str, Any]:
    """accel_launch.check_result of a document built by accel_check itself, as the role reads it."""
    allreduce = _allreduce(busbw, len(hosts))
    job = [accel_check.busbw_problem(allreduce, MIN_BUSBW)] if busbw is not None else [
        f"all_reduce (hccl, {len(hosts)} processes) failed after 0.3 s: RuntimeError: HCCL error"
    ]  # fmt: skip
    ranks = [_rank(i, name) for i, name in enumerate(hosts)]
    node = list(hosts).index(host)
    doc = accel_check.build_host_document(ranks, (node, host), allreduce, [p for p in job if p], 1, 0.5)
    doc["exit_code"] = 0 if doc["verdict"] == "PASS" else 1
    plan = {
        "nnodes": len(hosts), "job_nnodes": 3, "node_rank": node, "nodes": list(hosts),
        "master_addr": "192.168.0.10", "master_port": 29501, "nproc_per_node": 1, "wrapper_timeout_s": 450,
    }  # fmt: skip
    return accel_launch.check_result(host, json.dumps(doc) + "\n", "", doc["exit_code"], plan, 12.0)


NODES = HOSTS[:3]


def _records_with_slow_second() -> list[list[dict[str, Any]]]:
    """What each server recorded when devserver-2 is slow (round 1: 1+2 slow; round 2: 1+3 fine)."""
    pair12 = {"round": 1, "active": True, "pair": ["devserver-1", "devserver-2"]}
    pair13 = {"round": 2, "active": True, "pair": ["devserver-1", "devserver-3"]}
    slow12 = accel_pairs.pair_record(_outcome("devserver-1", pair12["pair"], 0.5), pair12)
    fast13 = accel_pairs.pair_record(_outcome("devserver-1", pair13["pair"], 20.0), pair13)
    return [[slow12, fast13], [slow12], [fast13]]


def test_pair_records_say_what_the_pair_measured() -> None:
    slow12, fast13 = _records_with_slow_second()[0]
    assert slow12["passed"] is False and slow12["busbw_gbps"] == 0.5 and slow12["min_busbw_gbps"] == MIN_BUSBW
    assert "bus bandwidth 0.5 GB/s (hccl, 2 processes) is below the minimum 10 GB/s" in slow12["problem"]
    assert slow12["summary"].startswith("devserver-1+devserver-2 0.5 GB/s (round 1): FAILED (the all_reduce")
    assert fast13["passed"] is True and fast13["problem"] is None
    assert fast13["summary"] == "devserver-1+devserver-3 20 GB/s (round 2): passed"


def test_the_slow_server_fails_by_name_and_the_others_pass() -> None:
    fleet_wide = {host: _outcome(host, NODES, 0.4) for host in NODES}
    for host in NODES:
        assert fleet_wide[host]["failed"] and fleet_wide[host]["cause"] == "slow collective"
        assert fleet_wide[host]["collective"] == "slow"
    records = _records_with_slow_second()
    outcomes = [fleet_wide[h] for h in NODES]
    final = {h: accel_pairs.pairwise_outcome(fleet_wide[h], h, NODES, outcomes, records, 3) for h in NODES}

    slow = final["devserver-2"]
    assert slow["failed"] and slow["cause"] == "slow server"
    first, measured = slow["message"].splitlines()[:2]
    assert first == (
        "devserver-2: accelerator check FAILED (slow server) over 3 server(s): devserver-2 is slow in every "
        "pair it is in: devserver-1+devserver-2 0.5 GB/s (round 1); pairs without it pass: "
        "devserver-1+devserver-3 20 GB/s (round 2)"
    )
    assert (
        measured.startswith("Measured: accelerator npu; ") and "busbw 0.4 GB/s (minimum 10 GB/s)" in measured
    )
    assert (
        "The fleet-wide all_reduce bus bandwidth 0.4 GB/s is below the minimum 10 GB/s; the rerun by pairs "
        "of servers names devserver-2." in slow["message"]
    )
    assert (
        "What to do: every collective with this server is slow: check its NPUs' network ports"
        in slow["message"]
    )
    assert slow["report"]["verdict"] == "FAIL" and slow["report"]["pairs"]["slow"] == ["devserver-2"]
    assert verdict_cell(slow["report"]).startswith(
        "FAIL (npu x1, matmul 290 TFLOP/s median, all_reduce busbw "
    )

    for host in ("devserver-1", "devserver-3"):
        healthy = final[host]
        assert healthy["failed"] is False and healthy["message"] == "" and healthy["cause"] is None
        report = healthy["report"]
        assert report["verdict"] == "PASS" and report["problems"] == [] and report["job_verdict"] == "FAIL"
        assert report["pairs"]["servers"] == {
            "devserver-1": "healthy", "devserver-2": "slow", "devserver-3": "healthy",
        }  # fmt: skip
        assert [r["nodes"] for r in report["pairs"]["results"]] == [
            ["devserver-1", "devserver-2"], ["devserver-1", "devserver-3"],
        ]  # fmt: skip
        # the report's cell: the fleet-wide bus bandwidth against its threshold, and who slowed it
        assert verdict_cell(report) == (
            "PASS (npu x1, matmul 290 TFLOP/s median, all_reduce busbw 0.4 GB/s (min 10) over 3 procs; "
            "rerun by pairs: devserver-2 slow)"
        )


def test_a_healthy_server_keeps_its_own_problems() -> None:
    fleet_wide = {host: _outcome(host, NODES, 0.4) for host in NODES}
    report = fleet_wide["devserver-3"]["report"]
    own = "devserver-3: found 1 npu devices, expected 8"
    report["problems"] = [own, *report["problems"]]
    outcomes = [fleet_wide[h] for h in NODES]
    final = accel_pairs.pairwise_outcome(
        fleet_wide["devserver-3"], "devserver-3", NODES, outcomes, _records_with_slow_second(), 3
    )
    assert final["failed"] and final["cause"] == "wrong device count"
    assert final["report"]["problems"] == [own]


def test_a_broken_server_is_named_when_the_collective_failed() -> None:
    fleet_wide = {host: _outcome(host, NODES, None) for host in NODES}
    assert {o["collective"] for o in fleet_wide.values()} == {"failed"}
    pair12 = {"round": 1, "active": True, "pair": ["devserver-1", "devserver-2"]}
    pair13 = {"round": 2, "active": True, "pair": ["devserver-1", "devserver-3"]}
    failed12 = accel_pairs.pair_record(_outcome("devserver-1", pair12["pair"], None), pair12)
    fine13 = accel_pairs.pair_record(_outcome("devserver-1", pair13["pair"], 20.0), pair13)
    assert failed12["summary"].startswith(
        "devserver-1+devserver-2 failed (round 1): FAILED (all_reduce (hccl"
    )
    records = [[failed12, fine13], [failed12], [fine13]]
    outcomes = [fleet_wide[h] for h in NODES]
    broken = accel_pairs.pairwise_outcome(
        fleet_wide["devserver-2"], "devserver-2", NODES, outcomes, records, 3
    )
    assert broken["cause"] == "broken server"
    assert broken["message"].startswith(
        "devserver-2: accelerator check FAILED (broken server) over 3 server(s): devserver-2 is broken in "
        "every pair it is in: devserver-1+devserver-2 failed (round 1)"
    )
    assert (
        "The fleet-wide all_reduce failed; the rerun by pairs of servers names devserver-2."
        in broken["message"]
    )
    assert "Its pair run says: all_reduce (hccl, 2 processes) failed after 0.3 s" in broken["message"]
    healthy = accel_pairs.pairwise_outcome(
        fleet_wide["devserver-3"], "devserver-3", NODES, outcomes, records, 3
    )
    assert healthy["failed"] is False and healthy["report"]["summary"].endswith(
        "rerun by pairs: devserver-2 broken"
    )


def test_every_server_keeps_the_failure_when_no_single_server_is_found() -> None:
    fleet_wide = {host: _outcome(host, NODES, 0.4) for host in NODES}
    outcomes = [fleet_wide[h] for h in NODES]
    pairs = [("devserver-1", "devserver-2"), ("devserver-1", "devserver-3"), ("devserver-2", "devserver-3")]
    passed = [
        accel_pairs.pair_record(
            _outcome(a, [a, b], 20.0), {"round": i + 1, "active": True, "pair": [a, b]}
        )
        for i, (a, b) in enumerate(pairs[:2])
    ]  # fmt: skip
    for host in NODES:
        final = accel_pairs.pairwise_outcome(fleet_wide[host], host, NODES, outcomes, [passed], 3)
        assert final["failed"] and final["cause"] == "slow collective"
        lines = final["message"].splitlines()
        note = next(line for line in lines if line.startswith("Every pair of servers passed"))
        assert "only with all 3 servers together" in note
        assert lines.index(note) == len(lines) - 2 and lines[-1].startswith("What to do: ")
        assert final["report"]["summary"].endswith("; rerun by pairs: no single server found")

    off = accel_pairs.pairwise_outcome(fleet_wide["devserver-1"], "devserver-1", NODES, outcomes, [[]] * 3, 0)
    assert (
        off["failed"]
        and "The rerun by pairs of servers is off (accel_check_pair_rounds: 0)." in off["message"]
    )
    assert off["report"]["pairs"]["skipped"] == "accel_check_pair_rounds is 0"


def test_an_uncleared_server_keeps_the_failure_naming_the_slow_one() -> None:
    nodes = HOSTS[:5]
    fleet_wide = {host: _outcome(host, nodes, 0.4) for host in nodes}
    outcomes = [fleet_wide[h] for h in nodes]
    # devserver-5 was never in a pair (the rounds ran out); devserver-2 is named
    records = [
        {"round": 1, "nodes": ["devserver-1", "devserver-2"], "passed": False, "busbw_gbps": 0.5},
        {"round": 1, "nodes": ["devserver-3", "devserver-4"], "passed": True, "busbw_gbps": 20.0},
        {"round": 2, "nodes": ["devserver-1", "devserver-3"], "passed": True, "busbw_gbps": 20.0},
    ]
    final = accel_pairs.pairwise_outcome(
        fleet_wide["devserver-5"], "devserver-5", nodes, outcomes, [records], 2
    )
    assert final["failed"] and final["report"]["pairs"]["servers"]["devserver-5"] == "uncleared"
    assert "names devserver-2 but could not clear devserver-5 (it was in no pair)." in final["message"]


def test_no_rerun_leaves_the_outcome_alone() -> None:
    outcome = _outcome("devserver-1", NODES[:2], 0.4)
    assert (
        accel_pairs.pairwise_outcome(outcome, "devserver-1", NODES[:2], [outcome] * 2, [[]] * 2, 3) == outcome
    )
    assert "pairs" not in outcome["report"]
