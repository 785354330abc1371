import collections
import datetime
import decimal
import enum
import json
import math
import os
import random
import struct
import subprocess
import sys

import pytest

from ansible_runner_nats_rs import _native
from ansible_runner_nats_rs._native import dumps

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def reference(x):
    return json.loads(json.dumps(x))


def ours(x):
    out = dumps(x)
    assert isinstance(out, bytes)
    return json.loads(out)


def assert_same(x):
    # NaN != NaN: compare the canonical re-serialization of both parses instead.
    a, b = ours(x), reference(x)
    assert json.dumps(a) == json.dumps(b)
    if not _has_nan(b):
        assert a == b
    return a


def _has_nan(x):
    return "NaN" in json.dumps(x)


class MyStr(str):
    def __str__(self):
        return "overridden"


class MyInt(int):
    def __repr__(self):
        return "overridden"


class MyFloat(float):
    def __repr__(self):
        return "overridden"


class MyList(list):
    pass


class MyTuple(tuple):
    pass


class MyDict(dict):
    pass


class Color(enum.IntEnum):
    RED = 1


Point = collections.namedtuple("Point", "x y")

od = collections.OrderedDict([("z", 1), ("a", 2), ("m", 3)])
od.move_to_end("z")

SURROGATE = "a\ud800b\udfffc"

TABLE = [
    None, True, False, 0, 1, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 2**200, -(2**200),
    0.0, -0.0, 0.1, 1e308, -1e308, 5e-324, 1e16, 1e15, 1e-4, 1e-5, 123.456, 1.5e300, 2.0**70,
    float("nan"), float("inf"), float("-inf"),
    "", "plain", "h\u00e9llo", "\u2713 \u4e2d\u6587", "\U0001F600 emoji", SURROGATE, "\udc80", "\ud83d\ude00",
    "".join(chr(i) for i in range(0x20)) + "\x7f", 'quote " backslash \\ slash /',
    "x" * 7 + '"', "long " * 200 + "\n", "\u2028\u2029",
    [], (), {}, [1, [2, [3, [4, []]]]], (1, (2,), "t"), {"a": {"b": {"c": {}}}},
    MyStr("sub"), MyInt(5), MyInt(2**70), MyFloat(0.5), MyList([1, 2]), MyTuple((3, 4)), Point(1, 2),
    MyDict(a=1), od, Color.RED,
    {1: "int key", 2.5: "float key", True: "bool", None: "none", -0.0: "neg zero", 2**80: "big"},
    {float("nan"): 1, float("inf"): 2, float("-inf"): 3},
    {False: 0, MyStr("k"): 1, MyInt(7): 2},
    {"nested": [{"k": (1, 2.0, None)}] * 3},
]


@pytest.mark.parametrize("x", TABLE, ids=lambda x: type(x).__name__)
def test_equal_to_json_dumps(x):
    assert_same(x)
    assert_same([x, {"v": x}])


def test_key_order_preserved():
    d = {"b": 1, "a": 2, "c": 3}
    assert list(ours(d)) == ["b", "a", "c"]
    assert list(ours(od)) == list(od)  # OrderedDict after move_to_end


def test_deep_nesting():
    x = y = []
    for _ in range(150):
        y.append([])
        y = y[0]
    assert_same(x)
    d = z = {}
    for i in range(150):
        z["k%d" % i] = {}
        z = z["k%d" % i]
    assert_same(d)


def test_deeper_than_fast_path_falls_back():
    x = y = []
    for _ in range(_native.MAX_DEPTH + 50):
        y.append([])
        y = y[0]
    before = _native.stats()["dumps_fallback"]
    assert_same(x)
    assert _native.stats()["dumps_fallback"] == before + 1


def test_floats_round_trip_and_match_repr():
    rnd = random.Random(1234)
    values = [rnd.random() * 10 ** rnd.randint(-30, 30) for _ in range(3000)]
    bits = (struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(3000))
    values += [v for v in bits if math.isfinite(v)]
    values += [0.1 + 0.2, 1 / 3, 2.0**-1074, 1.7976931348623157e308, 9007199254740993.0, 1e22, 1e23]
    differ = []
    for v in values:
        out = dumps(v)
        assert float(out) == v and math.copysign(1, float(out)) == math.copysign(1, v), v
        if out != json.dumps(v).encode():
            differ.append(v)
    # Both are shortest round-trip digits; only exact ties between two shortest candidates
    # may differ (Rust's formatter rounds those half-up, Python's dtoa half-even).
    assert len(differ) <= len(values) // 500, differ[:5]
    for v in differ:
        assert len(repr(v).replace("-", "")) >= 17, v


def test_float_keys_are_written_as_json_dumps_writes_them():
    # Keys stay strings after parsing, so their digits must be float.__repr__'s exactly;
    # values only have to read back as the same float.
    rng = random.Random(7)
    for _ in range(20000):
        v = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        assert dumps({v: 1}) == json.dumps({v: 1}, separators=(",", ":")).encode(), v
    for v in (256119882728783.62, 1e16, 1e-7, -0.0, float("nan"), float("inf"), float("-inf")):
        assert dumps({v: 1}) == json.dumps({v: 1}, separators=(",", ":")).encode(), v


def test_bytes_identical_where_promised():
    # compact separators, UTF-8: only those differ from json.dumps
    x = {"a": [1, 2.5, None, True, "q\"\\\n\x01"], "b": SURROGATE}
    assert dumps(x) == json.dumps(x, separators=(",", ":")).encode()
    assert dumps("h\u00e9") == '"h\u00e9"'.encode()


@pytest.mark.parametrize(
    "x",
    [
        datetime.datetime(2024, 1, 2, 3, 4, 5),
        {"when": datetime.date(2024, 1, 2), "n": 1},
        {1, 2, 3},
        b"bytes",
        bytearray(b"ba"),
        object(),
        decimal.Decimal("1.5"),
        {"nested": [1, {"x": frozenset()}]},
        [complex(1, 2)],
    ],
    ids=lambda x: type(x).__name__,
)
def test_fallback_default_str(x):
    before = _native.stats()["dumps_fallback"]
    assert ours(x) == json.loads(json.dumps(x, default=str))
    assert _native.stats()["dumps_fallback"] == before + 1


def test_fallback_custom_object():
    class Thing:
        def __str__(self):
            return "thing!"

    x = {"runner_ident": "r1", "obj": Thing(), "l": [Thing()]}
    assert ours(x) == {"runner_ident": "r1", "obj": "thing!", "l": ["thing!"]}


def test_cycles_give_error_document():
    d = {"runner_ident": "abc", "uuid": "u-1", "event": "runner_on_ok", "counter": 7}
    d["self"] = d
    out = ours(d)
    assert out["error"] == "unserializable event"
    assert "ircular" in out["detail"]
    assert (out["runner_ident"], out["uuid"], out["event"], out["counter"]) == ("abc", "u-1", "runner_on_ok", 7)
    lst = []
    lst.append(lst)
    assert ours(lst)["error"] == "unserializable event"
    # exponential fan-out over a cycle must end at once
    a = []
    a.extend([a, a, a])
    assert ours([a, a])["error"] == "unserializable event"


def test_bad_keys_and_bad_str_give_error_document():
    assert ours({(1, 2): "tuple key"})["error"] == "unserializable event"

    class Bad:
        def __str__(self):
            raise RuntimeError("no str")

    assert ours({"x": Bad(), "runner_ident": "\ud800"})["error"] == "unserializable event"
    assert ours({"x": Bad()})["detail"] == "no str"


def test_same_object_twice_is_not_a_cycle():
    shared = {"a": [1, 2]}
    assert_same([shared, shared, {"k": shared}])


def test_dict_subclass_items_override():
    class Weird(dict):
        def items(self):
            return [("only", 1)]

    assert_same(Weird(a=1, b=2))


def test_keyboard_interrupt_propagates():
    class Interrupting(dict):
        def items(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dumps({"x": Interrupting(a=1)})


def test_mutation_during_serialization_is_safe():
    target = {"a": [1, 2, 3], "b": "x" * 100}

    class Mutator(dict):
        def items(self):
            target.clear()
            return [("m", 1)]

    target["c"] = Mutator(z=1)
    target["d"] = [1, 2]
    # Must not crash; result is whatever is valid JSON.
    json.loads(dumps(target))


# A garbage collection started by one of the serializer's own allocations (the UTF-8 of a
# str with a lone surrogate, the decimal of an int beyond 64 bits) runs finalizers and gc
# callbacks, which may clear the container the value was borrowed from. Run under
# PYTHONMALLOC=debug, where reading freed memory crashes instead of passing unseen.
COLLECTING_FINALIZER = r"""
import gc, sys
from ansible_runner_nats_rs import dumps

class ClearsOnCollect:
    def __del__(self):
        holder.clear()

class Key(str):
    pass

# Each value made afresh, so that the container holds its only reference.
fresh = [lambda: "".join(["\ud800", "A" * 5000]), lambda: 10 ** 40 + len(sys.argv),
         lambda: ["value", len(sys.argv)], lambda: "".join(["\u00e9", "B" * 100])]
# Keys whose conversion allocates (and so may collect) before their value is written.
keys = [lambda: "".join(["\ud800", "k"]), lambda: "".join(["\u00e9", "k"]),
        lambda: 10 ** 40 + len(sys.argv), lambda: Key("k")]
containers = [lambda v: {"k": v}, lambda v: [v]]
containers += [lambda v, key=key: {key(): v} for key in keys]
for value in fresh:
    for container in containers:
        make = lambda: container(value())
        for _ in range(20):
            holder = make()
            gc.collect()
            f = ClearsOnCollect()
            f.cycle = f
            del f
            gc.set_threshold(1)
            out = dumps(holder)
            gc.set_threshold(700)
            # Cleared before its first item, or written whole: never a freed value.
            if out not in (dumps(make()), b"{}", b"[]"):
                sys.exit(f"unexpected {out[:40]!r}")
print("ok")
"""


def test_a_collection_during_serialization_cannot_free_the_value_being_written():
    env = dict(os.environ, PYTHONMALLOC="debug")
    proc = subprocess.run([sys.executable, "-c", COLLECTING_FINALIZER], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stderr[-2000:])


def load(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("name", ["event_item.json", "event_loop60.json"])
def test_fixture_events(name):
    ev = load(name)
    before = _native.stats()["dumps_fast"]
    assert ours(ev) == ev
    assert _native.stats()["dumps_fast"] == before + 1
    # and byte-identical to json.dumps apart from separators and ensure_ascii
    assert dumps(ev) == json.dumps(ev, separators=(",", ":"), ensure_ascii=False).encode()


def test_fixture_sizes():
    assert 1300 <= len(json.dumps(load("event_item.json"))) <= 1700
    ev = load("event_loop60.json")
    assert len(ev["event_data"]["res"]["results"]) == 60
    assert 35000 <= len(json.dumps(ev)) <= 45000


def test_escapes_at_every_position():
    for n in range(0, 40):
        for pos in range(n):
            for ch in ('"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u00e9", "\u20ac", "\U0001F600", "\udcff"):
                s = "abcdefghijklmnopqrstuvwxyz0123456789ABCD"[:n]
                s = s[:pos] + ch + s[pos + 1 :]
                assert json.loads(dumps(s)) == json.loads(json.dumps(s)), (n, pos, ch)
                if ch != "\udcff":
                    assert dumps(s) == json.dumps(s, ensure_ascii=False).encode(), (n, pos, ch)


def test_random_strings_with_many_escapes():
    # Strings of every length up to 70, built from plain bytes, every escaped byte, and
    # multi-byte characters, so escapes fall on word boundaries, inside words and in the
    # padded last word, several per word.
    alphabet = ["a", "Z", " ", "~", '"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u00e9", "\u20ac", "\U0001F600"]
    rng = random.Random(7)
    for n in range(71):
        for _ in range(30):
            s = "".join(rng.choice(alphabet) for _ in range(n))
            assert dumps(s) == json.dumps(s, ensure_ascii=False).encode(), repr(s)
            assert dumps({s: s}) == json.dumps({s: s}, ensure_ascii=False, separators=(",", ":")).encode()
