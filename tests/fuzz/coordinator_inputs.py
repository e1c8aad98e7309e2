"""What the coordinator fuzz tests draw from and how they call: ids, numbers at the edges, and
one fuzzed call to a Coordinator RPC by name, with the invariants checked around it."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.fuzz.conftest import CoordinatorUnderTest
from tests.fuzz.raw import REFUSED, Outcome, assert_precise, send
from tests.support import COORDINATOR_RPCS

U64 = 2**64 - 1

ids = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "j-00000000", "../etc", "j-\x00", "🙂", "a" * 300]),
)
floats = st.floats(allow_nan=True, allow_infinity=True)
u32 = st.one_of(st.integers(0, 4), st.sampled_from([2**31, 2**32 - 1]))
u64 = st.one_of(st.integers(0, 4), st.sampled_from([2**63, U64]))


def call(co: CoordinatorUnderTest, rpc: str, messages: list[bytes]) -> Outcome:
    """``messages`` to the coordinator's ``rpc``, however that RPC streams."""
    return send(co.raw, COORDINATOR_RPCS[rpc], messages)


def exchange(co: CoordinatorUnderTest, rpc: str, messages: list[bytes]) -> Outcome:
    """One fuzzed call with the invariants checked around it."""
    before = co.fingerprint()
    outcome = call(co, rpc, messages)
    assert_precise(outcome, REFUSED, f"{rpc} {messages[:1]!r}")
    co.check(before, outcome, rpc)
    return outcome
