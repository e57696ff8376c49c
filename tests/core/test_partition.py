"""Our murmur2 partitioner must put every key where Kafka's own clients put it."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from core.partition import murmur2, partition_for


@settings(max_examples=2000, deadline=None)
@given(key=st.binary(max_size=200), partitions=st.integers(min_value=1, max_value=64))
def test_same_partition_as_aiokafka(key: bytes, partitions: int) -> None:
    every = list(range(partitions))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, every, every)


def test_kafka_utils_murmur2_vectors() -> None:
    """The cases of Kafka's UtilsTest.testMurmur2 (Java ints, so signed)."""
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, java in cases.items():
        assert murmur2(key) == java & 0xFFFFFFFF, key
