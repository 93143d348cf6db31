"""The ledger: transfers conserve money; deposits and withdrawals are the only sources and sinks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perpmargin.errors import InvariantViolation
from perpmargin.ledger import FEES, Ledger, Transfer

HOLDERS = ["alice", "bob", "alice#BTCUSDT#BOTH", FEES, "@insurance"]


def test_a_transfer_moves_money_and_keeps_the_total() -> None:
    led = Ledger()
    led.deposit("alice", "USDT", 1_000)
    led.transfer(Transfer("alice", "bob", "USDT", 300, "test"))
    assert led.balance("alice", "USDT") == 700
    assert led.balance("bob", "USDT") == 300
    led.check_conservation()


def test_a_negative_move_flows_back() -> None:
    led = Ledger()
    led.deposit("alice", "USDT", 10)
    led.move("alice", "bob", "USDT", -5, "test")
    assert led.balance("alice", "USDT") == 15
    assert led.balance("bob", "USDT") == -5
    led.check_conservation()


def test_rollback_restores_every_balance_and_total() -> None:
    led = Ledger()
    led.deposit("alice", "USDT", 100)
    before = (dict(led.balances), dict(led.deposited), dict(led.withdrawn))
    led.begin()
    led.deposit("bob", "BTC", 7)
    led.withdraw("alice", "USDT", 40)
    led.move("alice", FEES, "USDT", 60, "fee")
    led.rollback()
    assert (led.balances, led.deposited, led.withdrawn) == before


def test_a_tampered_balance_breaks_conservation() -> None:
    led = Ledger()
    led.deposit("alice", "USDT", 100)
    led.balances[("alice", "USDT")] += 1
    with pytest.raises(InvariantViolation):
        led.check_conservation()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["deposit", "withdraw", "move"]),
            st.sampled_from(HOLDERS),
            st.sampled_from(HOLDERS),
            st.sampled_from(["USDT", "BTC"]),
            st.integers(-(10**18), 10**18),
        ),
        max_size=60,
    )
)
def test_any_sequence_of_operations_conserves_money(ops: list[tuple[str, str, str, str, int]]) -> None:
    led = Ledger()
    for kind, a, b, asset, amount in ops:
        if kind == "deposit" and amount > 0:
            led.deposit(a, asset, amount)
        elif kind == "withdraw" and amount > 0:
            led.withdraw(a, asset, amount)
        elif kind == "move":
            led.move(a, b, asset, amount, "op")
        led.check_conservation()
