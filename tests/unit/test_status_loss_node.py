"""`llava-devserver status`: the row of the node whose log holds the loss, and the throughput of its log."""

from __future__ import annotations

from typing import Any

from llava_devserver.commands.fleet import host_status, mark_loss_log, render_status

MEGATRON_TAIL = "\n".join(
    f" iteration {i:8d}/      10 | consumed samples: {4 * i:12d} | elapsed time per iteration (ms): 250.0 |"
    f" learning rate: 1.000000E-03 | global batch size:     4 | lm loss: {3.0 - i / 10:.6E} |"
    for i in range(1, 11)
)


def _status(tail: str, rule: str, rank: int, **job: Any) -> dict[str, Any]:
    return {
        "npu": {"cards": [{"health": "OK"}]},
        "npu_problems": [],
        "docker": "running 24.0.7",
        "container": "running",
        "job": {"state": "finished", "world_size": 2, **job},
        "log_tail": tail,
        "loss_log_node": rule,
        "node_rank": rank,
        "projector": {"path": "/ws/out/mm_projector.bin", "bytes": 3 * 2**20} if rank == 0 else None,
    }


def test_megatron_last_node_is_marked_with_its_step_loss_and_throughput() -> None:
    rows = [
        host_status("ds-1", _status("using world size: 2\n", "auto", 0), None),
        host_status("ds-2", _status(MEGATRON_TAIL, "auto", 1), None),
    ]
    chosen = mark_loss_log(rows)
    assert chosen is rows[1] and rows[1].loss_log and not rows[0].loss_log
    assert rows[1].step == 10 and rows[1].loss == 2.0 and rows[0].loss is None
    # by hand: 10 iterations x 4 samples in 10 x 0.25 s = 16 samples/s; 2 NPUs: 8 per NPU
    assert rows[1].samples_per_s == 16.0 and rows[1].samples_per_s_per_npu == 8.0
    assert rows[0].projector == {"path": "/ws/out/mm_projector.bin", "bytes": 3 * 2**20}
    table = render_status(rows)
    assert table.caption == "* the loss log: ds-2 (node 1, loss_log_node=auto)"


def test_first_and_hf_style() -> None:
    hf_tail = "{'loss': 2.5, 'epoch': 0.5}\n{'train_runtime': 10.0, 'train_samples_per_second': 8.0}\n"
    rows = [
        host_status("ds-1", _status(hf_tail, "auto", 0), None),
        host_status("ds-2", _status("", "auto", 1), None),
    ]
    assert (
        mark_loss_log(rows) is rows[0]
        and rows[0].samples_per_s == 8.0
        and rows[0].samples_per_s_per_npu == 4.0
    )
    rows = [host_status(h, _status(MEGATRON_TAIL, "first", r), None) for h, r in (("ds-1", 0), ("ds-2", 1))]
    assert mark_loss_log(rows) is rows[0]  # the setting wins over what the logs hold
    unreachable = host_status("ds-3", None, "unreachable")
    assert mark_loss_log([unreachable]) is None and not unreachable.loss_log
