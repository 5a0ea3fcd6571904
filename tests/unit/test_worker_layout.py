"""How ``--workers N`` groups the domains: contiguous in flow order, balanced, deterministic."""

from __future__ import annotations

import pytest

from runtime.worker_layout import CPU_MS_PER_1000_TICKS, FLOW_ORDER, assign


@pytest.mark.parametrize("workers", range(1, len(FLOW_ORDER) + 1))
def test_every_domain_is_hosted_once_in_flow_order_and_no_worker_is_idle(workers: int) -> None:
    groups = assign(FLOW_ORDER, workers)
    assert len(groups) == workers
    assert all(groups)
    assert [d for group in groups for d in group] == list(FLOW_ORDER)


def test_two_workers_split_the_feed_side_from_the_portfolio_side() -> None:
    assert assign(FLOW_ORDER, 2) == [
        ("market_data", "ai_engine", "risk_safety"),
        ("execution", "portfolio", "analytics"),
    ]


def test_the_busiest_worker_is_as_light_as_any_contiguous_split_allows() -> None:
    groups = assign(FLOW_ORDER, 3)
    busiest = max(sum(CPU_MS_PER_1000_TICKS[d] for d in group) for group in groups)
    # one split by hand that is worse: the tick readers ai_engine+execution together
    worse = [
        ("market_data",),
        ("ai_engine", "risk_safety", "execution"),
        ("portfolio", "analytics"),
    ]
    assert busiest < max(sum(CPU_MS_PER_1000_TICKS[d] for d in g) for g in worse)


def test_a_subset_of_domains_is_ordered_by_the_flow_whatever_order_it_was_given_in() -> None:
    assert assign(["portfolio", "ai_engine", "execution"], 2) == [
        ("ai_engine", "execution"),
        ("portfolio",),
    ]


@pytest.mark.parametrize("workers", [0, 7])
def test_more_workers_than_domains_or_none_is_refused_with_the_range(workers: int) -> None:
    with pytest.raises(ValueError, match=r"--workers .*: give 1 to 6"):
        assign(FLOW_ORDER, workers)


def test_an_unknown_domain_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown domain"):
        assign(["market_data", "oracle"], 1)
