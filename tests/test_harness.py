"""The multi-process test harness itself: results come back, rank failures reach pytest clearly."""

import time

import pytest

from harness import RankAssertionError, RankError, RankTimeout, run_ranks


def _all_reduce(rank: int, world_size: int, scale: float) -> dict:
    import torch
    import torch.distributed as dist

    t = torch.ones(3) * (rank + 1) * scale
    dist.all_reduce(t)
    return {"rank": rank, "sum": t, "device": str(torch.empty(1, device="cuda").device)}


def _assert_on_rank1(rank: int, world_size: int) -> None:
    assert rank != 1, "rank 1 disagrees"


def _raise_on_rank0(rank: int, world_size: int) -> None:
    import torch.distributed as dist

    if rank == 0:
        raise KeyError("missing tensor 'decoder.layers.0.x'")
    dist.barrier()  # rank 1 blocks here until it is killed


def _sleep(rank: int, world_size: int) -> None:
    time.sleep(60)


def test_results_come_back_in_rank_order_with_cuda_redirected_to_cpu():
    res = run_ranks(_all_reduce, 2, 2.0, timeout=120)
    assert [r["rank"] for r in res] == [0, 1]
    assert res[0]["sum"].tolist() == [6.0, 6.0, 6.0]
    assert res[1]["device"] == "cpu"


def test_assert_in_a_rank_is_a_pytest_failure_naming_the_rank():
    with pytest.raises(RankAssertionError, match="rank 1 disagrees") as e:
        run_ranks(_assert_on_rank1, 2, timeout=120)
    assert isinstance(e.value, AssertionError)
    assert list(e.value.failures) == [1]


def test_exception_in_one_rank_stops_the_others_and_shows_the_traceback():
    t0 = time.monotonic()
    with pytest.raises(RankError, match="decoder.layers.0.x") as e:
        run_ranks(_raise_on_rank0, 2, timeout=120, grace=2)
    assert not isinstance(e.value, AssertionError)
    assert e.value.failures[0][0] == "KeyError"
    assert time.monotonic() - t0 < 60


def test_a_hung_run_times_out():
    with pytest.raises(RankTimeout, match="no result after"):
        run_ranks(_sleep, 2, timeout=8)
