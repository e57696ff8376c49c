"""Per-record cost of `decode`: `python -m schemas.bench [N]` prints µs/record for every topic, with a
bare orjson.loads of the same bytes as the floor. The sample is each schema's first example."""

from __future__ import annotations

import sys
import time

import orjson

from schemas.codec import _TOPICS, decode, encode, json_schema


def _best_of(repeats: int, n: int, run: object) -> float:
    assert callable(run)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(n)
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def bench_decode(n: int = 100_000, topic: str = "chat.intents", repeats: int = 5) -> float:
    """µs per `decode(topic, …)` of the schema's example record, best of `repeats` runs of `n`."""
    data = encode(json_schema(topic)["examples"][0])

    def run(count: int) -> None:
        for _ in range(count):
            decode(topic, data)

    return _best_of(repeats, n, run)


def bench_parse_only(n: int = 100_000, topic: str = "chat.intents", repeats: int = 5) -> float:
    """µs per bare orjson.loads of the same bytes: the floor decode cannot go below."""
    data = encode(json_schema(topic)["examples"][0])

    def run(count: int) -> None:
        for _ in range(count):
            orjson.loads(data)

    return _best_of(repeats, n, run)


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 100_000
    print(f"decode µs/record (best of 5 × {n}); orjson.loads alone in brackets")
    for topic in _TOPICS:
        size = len(encode(json_schema(topic)["examples"][0]))
        print(f"  {topic:26} {bench_decode(n, topic):6.2f}  [{bench_parse_only(n, topic):5.2f}]  {size} B")


if __name__ == "__main__":
    main(sys.argv[1:])
