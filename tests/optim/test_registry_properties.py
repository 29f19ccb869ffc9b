"""Property-based tests (hypothesis) of ``parse_optimizer_spec``: a ``NAME:KEY=VALUE,...`` string
built from any registry name or alias (any case, ``-`` for ``_``) and numeric, tuple or bare-word
values parses back to that optimizer and those values; unknown or reserved keys raise a ValueError
that lists every valid key."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from focus_optim.optim import registry as R

FAST = settings(max_examples=100, deadline=None, database=None)
NAMES = sorted(R.REGISTRY)
SPELLINGS = sorted({*NAMES, *(a for s in R.REGISTRY.values() for a in s.aliases)})
VALID = {name: sorted(R.REGISTRY[name].hyperparameters()) for name in NAMES}

finite = st.floats(allow_nan=False, allow_infinity=False)
numbers = st.one_of(st.integers(-(10**12), 10**12), finite)
values = st.one_of(
    numbers,
    st.tuples(finite, finite),
    st.lists(numbers, min_size=1, max_size=3).map(tuple),
    st.booleans(),
)
bare_words = st.from_regex(r"\A[a-z][a-z0-9_]{0,12}\Z")  # e.g. decay_mode=reference


@st.composite
def spellings(draw: st.DrawFn) -> tuple[str, str]:
    """(canonical name, how it is written): a name or alias in any case, with - for some _."""
    spelled = draw(st.sampled_from(SPELLINGS))
    canonical = R.get_spec(spelled).name
    chars = [
        draw(st.sampled_from([ch, "-"])) if ch == "_" else draw(st.sampled_from([ch.lower(), ch.upper()]))
        for ch in spelled
    ]
    return canonical, "".join(chars)


def fmt(value: Any, bare: bool) -> str:
    return value if bare else repr(value)


def spec_text(written: str, items: list[tuple[str, str]], spaces: bool) -> str:
    """``NAME:KEY=VALUE,...`` (no ``:`` without items), optionally with spaces around , and =."""
    if not items:
        return written
    sep, eq = (" , ", " = ") if spaces else (",", "=")
    return written + ":" + sep.join(f"{k}{eq}{v}" for k, v in items)


@FAST
@given(name=spellings(), data=st.data(), spaces=st.booleans())
def test_spec_string_round_trips(name: tuple[str, str], data: st.DataObject, spaces: bool) -> None:
    canonical, written = name
    keys = [k for k in VALID[canonical] if k != "lr"]
    chosen = data.draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)), label="keys")
    hparams: dict[str, Any] = {}
    items = []
    for key in chosen:
        bare = data.draw(st.booleans(), label=f"{key} is a bare word")
        value = data.draw(bare_words if bare else values, label=key)
        hparams[key] = value
        items.append((key, fmt(value, bare)))
    text = spec_text(written, items, spaces)
    spec, parsed = R.parse_optimizer_spec(text, validate=False)  # the syntax; values are any
    assert spec is R.REGISTRY[canonical]
    assert parsed == hparams
    assert list(parsed) == chosen
    for key, value in hparams.items():  # same types too (1 == 1.0 == True would hide a mix-up)
        assert type(parsed[key]) is type(value)


@FAST
@given(
    name=spellings(),
    unknown=st.from_regex(r"\A[a-z][a-z_]{0,10}\Z"),
    value=numbers,
    reserved=st.sampled_from([("lr",), ("lr", "betas"), ()]),
)
def test_unknown_or_reserved_keys_list_the_valid_ones(
    name: tuple[str, str], unknown: str, value: float, reserved: tuple[str, ...]
) -> None:
    canonical, written = name
    valid = VALID[canonical]
    assume(unknown not in reserved)  # else the key is given twice: a different error
    bad = {*reserved, *([unknown] if unknown not in valid else [])}  # a reserved key is never allowed
    assume(bad)  # otherwise every key is accepted (the round trip covers that)
    items = [(unknown, repr(value)), *((k, "0.5") for k in reserved)]
    text = spec_text(written, items, spaces=False)
    allowed = ", ".join(k for k in valid if k not in reserved)
    with pytest.raises(ValueError) as info:
        R.parse_optimizer_spec(text, reserved=reserved, why="is swept", kind="scanned")
    msg = str(info.value)
    assert msg.startswith(f"Invalid optimizer {text!r}: unknown or scanned hyperparameter(s) "), msg
    listed = re.search(r"hyperparameter\(s\) (\S+(?:, \S+)*) \(", msg)
    assert listed is not None and listed.group(1) == ", ".join(sorted(bad)), msg
    assert msg.endswith(f"valid for {canonical}: {allowed})"), msg
