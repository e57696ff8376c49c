"""Kafka's default key partitioner (murmur2, as the Java client and aiokafka compute it), faster.

aiokafka's pure-Python murmur2 assembles every word byte by byte (~5 µs a key); unpacking the
words in one `struct` call does the same arithmetic in a fraction of that. Keys must land where
other clients put them (ad.impressions and ad.clicks.raw are joined by partition), so tests
compare this with aiokafka's implementation.
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    length = len(data)
    h = (_SEED ^ length) & _MASK
    words = length >> 2
    if words:
        for k in struct.unpack_from(f"<{words}I", data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            k = (k * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = length & ~3
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key` among `partitions`."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
