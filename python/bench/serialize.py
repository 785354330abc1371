"""Micro benchmark: µs per call serializing the fixture events.

    python bench/serialize.py [--number N]

Compares ansible_runner_nats_rs._native.dumps with json.dumps(...).encode() (and orjson.dumps
if it happens to be installed; it is not a dependency).
"""

import argparse
import json
import os
import sys
import timeit

from ansible_runner_nats_rs import _native

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def best_us(fn, number, repeat=7):
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=0, help="calls per timing (default: auto)")
    args = ap.parse_args()
    cands = [
        ("ours", _native.dumps),
        ("json.dumps", lambda x: json.dumps(x).encode()),
    ]
    try:
        import orjson

        cands.append(("orjson", orjson.dumps))
    except ImportError:
        pass
    print(f"python {sys.version.split()[0]}, native abi3={_native.ABI3}")
    for name in ("event_item.json", "event_loop60.json"):
        with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
            ev = json.load(f)
        size = len(json.dumps(ev))
        number = args.number or (20000 if size < 10000 else 1000)
        row = []
        for label, fn in cands:
            us = best_us(lambda: fn(ev), number)
            row.append(f"{label} {us:8.2f} us")
        print(f"{name:20s} {size:6d} B   " + "   ".join(row))


if __name__ == "__main__":
    main()
