"""Property-based tests (hypothesis) of the sweep runner's sharding: ``Shard(i, n).take`` splits the
cells of any grid into n disjoint strided shards that cover it, and ``parse_shard`` accepts exactly
the ``i/n`` strings with 0 <= i < n (round trip) and rejects the rest with a ValueError naming it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from focus_optim.sweep import Cell, Shard, SweepSpec, parse_shard

FAST = settings(max_examples=100, deadline=None, database=None)


def grid_cells(shape: tuple[int, ...]) -> list[Cell]:
    """The cells of a sweep whose outer grid has this shape (no axes: the single cell "all")."""
    outer = {f"axis{k}": [f"v{j}" for j in range(m)] for k, m in enumerate(shape)}
    spec = SweepSpec(name="prop", outer=outer, inner={"replicate": [0]}, variables={"x": ()})
    return spec.cells()


@FAST
@given(shape=st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple), count=st.integers(1, 16))
def test_shards_partition_the_cells_in_strides(shape: tuple[int, ...], count: int) -> None:
    cells = grid_cells(shape)
    keys = [c.key for c in cells]
    assert len(set(keys)) == len(keys)  # keys identify cells
    shards = [[c.key for c in Shard(i, count).take(cells)] for i in range(count)]
    # disjoint, and together every cell exactly once
    assert sorted(k for s in shards for k in s) == sorted(keys)
    # "every n-th cell": shard i holds the cells i, i + n, i + 2n, ... in their order
    for i, shard in enumerate(shards):
        assert shard == keys[i::count]
    # hence balanced: sizes differ by at most one, the larger shards first
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)
    assert sizes == [len(cells) // count + (i < len(cells) % count) for i in range(count)]


@FAST
@given(items=st.lists(st.integers(), max_size=60), count=st.integers(1, 16))
def test_take_works_on_any_sequence_and_returns_new_lists(items: list[int], count: int) -> None:
    shards = [Shard(i, count).take(items) for i in range(count)]
    for i, shard in enumerate(shards):
        assert isinstance(shard, list)
        assert shard == [x for j, x in enumerate(items) if j % count == i]
    assert sum(len(s) for s in shards) == len(items)
    assert Shard(0, count).take(tuple(items)) == shards[0]


@FAST
@given(count=st.integers(1, 10_000), data=st.data())
def test_parse_shard_round_trips(count: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, count - 1), label="index")
    shard = parse_shard(f"{index}/{count}")
    assert shard == Shard(index, count)
    assert parse_shard(f"{shard.index}/{shard.count}") == shard


@st.composite
def out_of_range(draw: st.DrawFn) -> tuple[int, int]:
    """Integer pairs (i, n) that are no shard: n < 1, i < 0, or i >= n."""
    case = draw(st.sampled_from(["n<1", "i<0", "i>=n"]))
    if case == "n<1":
        return draw(st.integers(-50, 50)), draw(st.integers(-50, 0))
    if case == "i<0":
        return draw(st.integers(-10_000, -1)), draw(st.integers(-50, 10_000))
    n = draw(st.integers(-50, 10_000))
    return draw(st.integers(max(n, 0), max(n, 0) + 10_000)), n


@FAST
@given(pair=out_of_range())
def test_parse_shard_rejects_integers_out_of_range(pair: tuple[int, int]) -> None:
    i, n = pair
    text = f"{i}/{n}"
    with pytest.raises(ValueError, match=re.escape(f"Invalid shard {text}")) as info:
        parse_shard(text)
    assert "0 <= i < n" in str(info.value) and "n >= 1" in str(info.value)
    with pytest.raises(ValueError, match=re.escape(f"Invalid shard {text}")):
        Shard(i, n)


not_an_integer = st.one_of(
    st.just(""),
    st.from_regex(r"\A[A-Za-z][A-Za-z0-9]*\Z"),  # a word
    st.from_regex(r"\A-?[0-9]+\.[0-9]+\Z"),  # a decimal
    st.from_regex(r"\A[0-9]+[a-z]\Z"),  # a number with a unit
)
integer_text = st.integers(-5, 20).map(str)


@st.composite
def malformed(draw: st.DrawFn) -> str:
    """Strings that are not two integers separated by one slash."""
    case = draw(st.sampled_from(["bad index", "bad count", "no slash", "two slashes"]))
    if case == "bad index":
        return f"{draw(not_an_integer)}/{draw(integer_text)}"
    if case == "bad count":
        return f"{draw(integer_text)}/{draw(not_an_integer)}"
    if case == "no slash":
        return draw(st.one_of(integer_text, not_an_integer, st.sampled_from(["1-4", "1:4", "1 4", "1\\4"])))
    parts = draw(st.lists(st.one_of(integer_text, not_an_integer), min_size=3, max_size=4))
    return "/".join(parts)


@FAST
@given(text=malformed())
def test_parse_shard_rejects_malformed_strings_naming_the_argument(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_shard(text)
    msg = str(info.value)
    assert msg.startswith(f"Invalid --shard {text!r}:"), msg
    assert "i/n" in msg
