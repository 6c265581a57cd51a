"""Usage sums: a plan's totals are its servers' usages added one by one."""

from __future__ import annotations

import functools
import operator

from hypothesis import given
from hypothesis import strategies as st

from engine.plan import NO_USAGE, Usage, total_usage

_USAGES = st.lists(
    st.builds(
        Usage,
        servers=st.integers(0, 3),
        vcpus=st.integers(0, 64),
        memory_gb=st.floats(0, 512, allow_nan=False),
        disk_gb=st.floats(0, 4096, allow_nan=False),
        monthly_cost=st.floats(0, 1000, allow_nan=False),
    ),
    max_size=40,
)


@given(_USAGES)
def test_a_total_is_the_usages_added_in_turn(usages: list[Usage]) -> None:
    cost = 0.0
    for usage in usages:
        cost = round(cost + usage.monthly_cost, 4)
    total = total_usage(usages)
    assert total == functools.reduce(operator.add, usages, NO_USAGE)
    assert total.monthly_cost == cost
    assert total.servers == sum(u.servers for u in usages)
    assert total.memory_gb == functools.reduce(operator.add, (u.memory_gb for u in usages), 0.0)


def test_the_cost_is_rounded_at_each_step_and_the_start_comes_first() -> None:
    tiny = Usage(servers=1, monthly_cost=0.00004)
    assert total_usage([tiny, tiny, tiny]).monthly_cost == 0.0
    start = Usage(servers=2, vcpus=4, memory_gb=8.0, disk_gb=80.0, monthly_cost=9.5)
    assert (
        total_usage([tiny], start=start)
        == start + tiny
        == Usage(servers=3, vcpus=4, memory_gb=8.0, disk_gb=80.0, monthly_cost=9.5)
    )
