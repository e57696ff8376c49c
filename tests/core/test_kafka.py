"""The one place Vickrey reaches into aiokafka beyond its documented API (core/kafka.py
`tune_aiokafka`): fails when an aiokafka upgrade drops or stops reading the constant."""

from __future__ import annotations

import inspect

from aiokafka.producer import sender

from core.kafka import CONCURRENT_TRANSACTIONS_BACKOFF_S, tune_aiokafka


def test_the_concurrent_transactions_backoff_is_still_aiokafkas_to_tune() -> None:
    tune_aiokafka()
    assert sender.BACKOFF_OVERRIDE == CONCURRENT_TRANSACTIONS_BACKOFF_S
    # aiokafka reads the module constant when it retries an AddPartitionsToTxn after
    # CONCURRENT_TRANSACTIONS (not a copy taken at import): that is what the tuning relies on.
    readers = [name for name, member in inspect.getmembers(sender, inspect.isclass)
               if "return BACKOFF_OVERRIDE" in inspect.getsource(member)]
    assert readers, "aiokafka.producer.sender no longer returns BACKOFF_OVERRIDE on a retry"
