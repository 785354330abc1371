"""Plugin cost per event: ours (ansible-runner-nats-rs) against the Python
`ansible-runner-nats` 0.4.0, each imported by this same script and driven the same way:
status_handler(starting), N x event_handler, status_handler(successful), with an
independent subscriber (`arn-bench count`) counting what arrived. Run by `make bench`.

Every measurement runs in a fresh process of its own (`plugin_cost.py --one ...`), after an
untimed warm-up round: in one shared process, a plugin's leftover background thread (the
Python plugin's asyncio loop still delivering or reconnecting) took the GIL from the other
plugin's calls, and whichever ran first paid for the cold start.

Each row gives medians of ROUNDS rounds, the two plugins interleaved: single measurements
of the Python plugin moved by several times from one run to the next.

A second table gives, from the same run, what the machine and the event allow any plugin:
the same messages pre-serialized and written straight to a socket (the server and the
counting subscriber's share of the time until the last arrived), and serializing the events
alone (the least a plugin that serializes in the call can take per call).

A third table says where the CPU goes until the last message arrived: the publishing process
(all its threads), nats-server and the counting subscriber, for ours, the Python plugin and
the pre-encoded frames. On two cores, the time until the last arrived follows their sum.

A fourth table answers "why not serialize later, in a thread, as the Python plugin does?":
our plugin called from a thread of its own behind a queue of event references, bounded and
unbounded, and what the unbounded queue held when the calls ended.
"""

import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from urllib.parse import urlsplit

from common import PEER_DEPS, ROOT, Counter, cpu_seconds, nats_server

FIXTURES = ROOT / "python" / "tests" / "fixtures"


class Config:
    """What the handlers read of ansible-runner's RunnerConfig."""

    def __init__(self, ident):
        self.ident = ident
        self.settings = {}


def cpu_now(counter, server_pid):
    """CPU seconds so far of this process (every thread, ended ones too), the server and the
    counter."""
    return time.process_time(), cpu_seconds(server_pid), counter.cpu()


def cpu_per_event(start, end, n):
    """µs of CPU per event of each party between two `cpu_now` readings."""
    return [(b - a) / n * 1e6 for a, b in zip(start, end)]


def run(plugin, url, server_pid, event, n, label):
    ident = f"{label}-{uuid.uuid4().hex[:8]}"
    os.environ["RUNNER_NATS_SUBJECT_ID"] = label
    os.environ["RUNNER_NATS_SERVERS"] = url
    counter = Counter(url, f"pub.ansible.runner.{label}.{ident}.>")
    config = Config(ident)
    events = events_of(event, n, ident)
    counter.start()
    cpu_start = cpu_now(counter, server_pid)
    plugin.status_handler(config, {"status": "starting", "runner_ident": ident})
    t0 = time.perf_counter()
    for e in events:
        plugin.event_handler(config, e)
    calls = time.perf_counter() - t0
    backlog = plugin.backlog() if isinstance(plugin, Deferred) else 0
    plugin.status_handler(config, {"status": "successful", "runner_ident": ident})
    # The Python plugin may lose messages: wait for all, but not forever, and not past 5 s
    # without a message (a plugin still delivering is never that quiet). The time is until
    # the last message arrived, so losses are not charged the wait.
    got, total = counter.wait(n + 2, timeout=90, quiet=5)
    cpu = cpu_per_event(cpu_start, cpu_now(counter, server_pid), n)
    counter.close()
    return calls / n * 1e6, total / n * 1e6, got, backlog, cpu


class Deferred:
    """Our plugin with its work deferred the way the Python plugin defers its own: the
    handler only queues a reference to the event, and a thread of its own serializes and
    publishes it (the terminal status waits for the queue to empty). `depth` bounds the
    queue; 0 leaves it unbounded, as the Python plugin's is."""

    TERMINAL = ("successful", "failed", "canceled", "timeout")

    def __init__(self, plugin, depth):
        self.plugin = plugin
        self.queue = queue.Queue(depth)
        threading.Thread(target=self.work, daemon=True).start()

    def work(self):
        while True:
            config, data = self.queue.get()
            self.plugin.event_handler(config, data)
            self.queue.task_done()

    def event_handler(self, config, data):
        self.queue.put((config, data))

    def status_handler(self, config, data):
        if data.get("status") in self.TERMINAL:
            self.queue.join()
        self.plugin.status_handler(config, data)

    def backlog(self):
        """Events queued and not yet taken by the thread."""
        return self.queue.qsize()


def parsed_size(event):
    """Bytes of Python objects of one event as ansible-runner hands it over (parsed from its
    JSON: each event its own objects, where the harness's copies share their nested ones)."""
    text = json.dumps(event)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = [json.loads(text) for _ in range(20)]
    size = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    tracemalloc.stop()
    return size


FIXTURES_BY_NAME = {"1.4 KB": "event_item.json", "38 KB": "event_loop60.json"}


def events_of(event, n, ident):
    return [dict(event, uuid=str(uuid.uuid4()), counter=i + 1, runner_ident=ident)
            for i in range(n)]


def floor(url, server_pid, event, n):
    """The same N events, serialized beforehand and written in 1 MiB batches of PUB frames
    straight to a socket: the time until the counter holds the last one is what the server
    and the subscriber take on this machine, with no plugin and no serializing. Returns
    that time and the CPU of each party, per event."""
    ident = f"floor-{uuid.uuid4().hex[:8]}"
    subject = f"pub.ansible.runner.floor.{ident}.event".encode()
    batches, batch = [], bytearray()
    for e in events_of(event, n, ident):
        payload = json.dumps(e).encode()
        batch += b"PUB %s %d\r\n%s\r\n" % (subject, len(payload), payload)
        if len(batch) >= 1 << 20:
            batches.append(bytes(batch))
            batch.clear()
    batches.append(bytes(batch))
    address = urlsplit(url)
    counter = Counter(url, f"pub.ansible.runner.floor.{ident}.>")
    with socket.create_connection((address.hostname, address.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        counter.start()
        cpu_start = cpu_now(counter, server_pid)
        for b in batches:
            sock.sendall(b)
        got, total = counter.wait(n, timeout=90)
        cpu = cpu_per_event(cpu_start, cpu_now(counter, server_pid), n)
    counter.close()
    if got != n:
        raise SystemExit(f"floor: {got} of {n} pre-encoded messages arrived")
    return total / n * 1e6, cpu


def serializing(event, n):
    """µs per event of serializing the same N events with our serializer, nothing else."""
    from ansible_runner_nats_rs import dumps

    events = events_of(event, n, "serialize")
    t0 = time.perf_counter()
    for e in events:
        dumps(e)
    return (time.perf_counter() - t0) / n * 1e6


def one(which, name, n, url, server_pid):
    """In a child process: warm up, then measure one plugin (or the floor, or serializing
    alone) on one event size; prints JSON."""
    event = json.loads((FIXTURES / FIXTURES_BY_NAME[name]).read_text())
    if which == "floor":
        result = floor(url, server_pid, event, n)
    elif which == "serializing":
        serializing(event, 200)
        result = serializing(event, n)
    elif which == "parsed-size":
        result = parsed_size(event)
    else:
        if which == "python":
            sys.path.insert(0, str(PEER_DEPS))
            import ansible_runner_nats as plugin
        else:
            import ansible_runner_nats_rs as plugin
        if which.startswith("deferred-"):
            plugin = Deferred(plugin, int(which.removeprefix("deferred-")))
        label = "py" if which == "python" else "rs"
        warm_up = json.loads((FIXTURES / "event_item.json").read_text())
        run(plugin, url, server_pid, warm_up, 200, label)
        result = run(plugin, url, server_pid, event, n, label)
    print(json.dumps(result), flush=True)
    # The Python plugin's loop thread may still be busy: leave without waiting for it.
    os._exit(0)


# The bounded queue of the deferral measurement: 256 events.
DEPTH = 256

# Each plugin, the serializer alone and the pre-encoded floor are measured this many times
# per row; the tables give medians.
ROUNDS = 3

# What the plugins logged during the measurements (ours logs every loss it knows of).
LOGGED = []


def measure(which, name, n, server):
    out = subprocess.run([sys.executable, __file__, "--one", which, name, str(n), server.url,
                          str(server.pid)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"measuring {which} {name} N = {n} failed: {out.stderr[-2000:]}")
    LOGGED.extend(f"{which}, {name}, N = {n}: {line}" for line in out.stderr.splitlines()
                  if line.startswith("ansible-runner.nats"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def rounds(name, n, server, *which):
    """Each of `which` measured ROUNDS times, interleaved, the order reversed every other
    round so that none is always first on a machine that drifts."""
    results = {w: [] for w in which}
    for r in range(ROUNDS):
        for w in which if r % 2 == 0 else which[::-1]:
            results[w].append(measure(w, name, n, server))
    return [results[w] for w in which]


def median_cpu(measured):
    """The element-wise medians of the rounds' CPU per event (publisher, server, counter)."""
    return [statistics.median(parts) for parts in zip(*measured)]


def shown_cpu(cpu):
    """'publisher + server + counter = sum', µs per event."""
    return " + ".join(f"{c:.1f}" for c in cpu) + f" = {sum(cpu):.1f}"


class Plugin:
    """A plugin's rounds of one row: median per call, median until the last arrived over the
    rounds in which anything did (None if nothing ever did), each round's count, and the
    median CPU per event of each party."""

    def __init__(self, measured, total):
        self.call = statistics.median(m[0] for m in measured)
        self.cpu = median_cpu(m[4] for m in measured)
        arrived = [m[1] for m in measured if m[2]]
        self.until = statistics.median(arrived) if arrived else None
        counts = [m[2] for m in measured]
        shown = str(counts[0]) if len(set(counts)) == 1 else ", ".join(map(str, counts))
        self.delivered = f"{shown} of {total}"


def main():
    print(f"## Plugin cost per event (µs, medians of {ROUNDS} rounds, the plugins interleaved; "
          "each measurement in a process of its own after a warm-up; one server; a subscriber "
          "process counting)\n")
    print("| event | N | ours: per call | Python: per call | ratio | ours: until the last arrived "
          "| Python: until the last arrived | ratio | delivered ours (each round) "
          "| delivered Python (each round) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    limits, deferred = [], []
    with nats_server() as server:
        for name in FIXTURES_BY_NAME:
            size = measure("parsed-size", name, 0, server)
            for n in (1000, 10000):
                o, p = (Plugin(m, n + 2) for m in rounds(name, n, server, "ours", "python"))
                if o.until is None:
                    raise SystemExit(f"ours, {name}, N = {n}: nothing arrived")
                # Nothing arrived: there is no time until the last arrival to compare.
                p_until = "nothing arrived" if p.until is None else f"{p.until:.1f}"
                ratio = "—" if p.until is None else f"{p.until / o.until:.1f}x"
                print(f"| {name} | {n} | {o.call:.1f} | {p.call:.1f} | {p.call / o.call:.1f}x "
                      f"| {o.until:.1f} | {p_until} | {ratio} "
                      f"| {o.delivered} | {p.delivered} |", flush=True)
                ser, flo = rounds(name, n, server, "serializing", "floor")
                ser = statistics.median(ser)
                flo, flo_cpu = statistics.median(f[0] for f in flo), median_cpu(f[1] for f in flo)
                limits.append((name, n, o, p, ser, flo, flo_cpu))
                deferred.append((name, n, p, o, measure(f"deferred-{DEPTH}", name, n, server),
                                 measure("deferred-0", name, n, server), size))
    print()
    print("### What the event and the machine allow any plugin (same run, same server and counter)\n")
    print("| event | N | serializing alone (µs per event) | Python per call / that | pre-encoded frames "
          "straight to a socket: until the last arrived (µs per event) | Python until the last "
          "arrived / that |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, n, _, p, ser, flo, _ in limits:
        most = "—" if p.until is None else f"{p.until / flo:.1f}x"
        print(f"| {name} | {n} | {ser:.1f} | {p.call / ser:.1f}x | {flo:.1f} | {most} |")
    print()
    print("A plugin that serializes in the call cannot show a larger per-call ratio than the "
          "fourth column, nor any publisher a larger ratio until the last arrived than the last.\n")
    print("### Where the CPU goes until the last arrived (µs per event, medians: the publishing "
          "process with all its threads + nats-server + the counting subscriber = sum)\n")
    print("| event | N | ours | Python | pre-encoded frames straight to a socket |")
    print("| --- | --- | --- | --- | --- |")
    for name, n, o, p, _, _, flo_cpu in limits:
        print(f"| {name} | {n} | {shown_cpu(o.cpu)} | {shown_cpu(p.cpu)} | {shown_cpu(flo_cpu)} |")
    print()
    print("The two cores are shared by all three: the time until the last arrived cannot be less "
          "than half the sum.\n")
    print("### Deferring the work instead: our plugin called from a thread of its own behind a "
          "queue of event references (µs per event)\n")
    print(f"| event | N | ours, serializing in the call: per call | until the last arrived "
          f"| queue of {DEPTH} events: per call | until the last arrived | Python per call / that "
          "| unbounded queue: per call | until the last arrived | Python per call / that "
          "| events still queued when the calls ended | what they hold (MB of parsed events) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, n, p, o, bounded, unbounded, size in deferred:
        for got in (bounded[2], unbounded[2]):
            if got != n + 2:
                raise SystemExit(f"deferred, {name}, N = {n}: {got} of {n + 2} delivered")
        print(f"| {name} | {n} | {o.call:.1f} | {o.until:.1f} "
              f"| {bounded[0]:.1f} | {bounded[1]:.1f} | {p.call / bounded[0]:.1f}x "
              f"| {unbounded[0]:.1f} | {unbounded[1]:.1f} | {p.call / unbounded[0]:.1f}x "
              f"| {unbounded[3]} | {unbounded[3] * size / 1e6:.0f} |")
    print()
    print("Only a queue as deep as the burst makes the calls cheap, and it holds the events' "
          "Python objects meanwhile; bounded, the calls wait for the thread, which needs the "
          "same GIL.\n")
    if LOGGED:
        print("Logged by the plugins while measured:\n")
        print("\n".join(f"- {line}" for line in LOGGED))
        print()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        one(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
    sys.exit(main())
