"""Plugin cost per event: ours (ansible-runner-nats-rs) against the Python
`ansible-runner-nats` 0.4.0, each imported by this same script and driven the same way:
status_handler(starting), N x event_handler, status_handler(successful), with an
independent subscriber (`arn-bench count`) counting what arrived. Run by `make bench`.

Every measurement runs in a fresh process of its own (`plugin_cost.py --one ...`), after an
untimed warm-up round: in one shared process, a plugin's leftover background thread (the
Python plugin's asyncio loop still delivering or reconnecting) took the GIL from the other
plugin's calls, and whichever ran first paid for the cold start.
"""

import json
import os
import subprocess
import sys
import time
import uuid

from common import PEER_DEPS, ROOT, Counter, nats_server

FIXTURES = ROOT / "python" / "tests" / "fixtures"


class Config:
    """What the handlers read of ansible-runner's RunnerConfig."""

    def __init__(self, ident):
        self.ident = ident
        self.settings = {}


def run(plugin, url, event, n, label):
    ident = f"{label}-{uuid.uuid4().hex[:8]}"
    os.environ["RUNNER_NATS_SUBJECT_ID"] = label
    os.environ["RUNNER_NATS_SERVERS"] = url
    counter = Counter(url, f"pub.ansible.runner.{label}.{ident}.>")
    config = Config(ident)
    events = []
    for i in range(n):
        e = dict(event, uuid=str(uuid.uuid4()), counter=i + 1, runner_ident=ident)
        events.append(e)
    counter.start()
    plugin.status_handler(config, {"status": "starting", "runner_ident": ident})
    t0 = time.perf_counter()
    for e in events:
        plugin.event_handler(config, e)
    calls = time.perf_counter() - t0
    plugin.status_handler(config, {"status": "successful", "runner_ident": ident})
    # The Python plugin may lose messages: wait for all, but not forever. The time is until
    # the last message arrived, so losses are not charged the timeout.
    got, total = counter.wait(n + 2, timeout=30 if n < 5000 else 90)
    counter.close()
    return calls / n * 1e6, total / n * 1e6, got


FIXTURES_BY_NAME = {"1.4 KB": "event_item.json", "38 KB": "event_loop60.json"}


def one(which, name, n, url):
    """In a child process: warm up, then measure one plugin on one event size; prints JSON."""
    if which == "python":
        sys.path.insert(0, str(PEER_DEPS))
        import ansible_runner_nats as plugin
    else:
        import ansible_runner_nats_rs as plugin
    label = "py" if which == "python" else "rs"
    event = json.loads((FIXTURES / FIXTURES_BY_NAME[name]).read_text())
    run(plugin, url, json.loads((FIXTURES / "event_item.json").read_text()), 200, label)
    print(json.dumps(run(plugin, url, event, n, label)), flush=True)
    # The Python plugin's loop thread may still be busy: leave without waiting for it.
    os._exit(0)


def measure(which, name, n, url):
    out = subprocess.run([sys.executable, __file__, "--one", which, name, str(n), url],
                         capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    print("## Plugin cost per event (µs; each measurement in a process of its own after a warm-up; "
          "one server; a subscriber process counting)\n")
    print("| event | N | ours: per call | Python: per call | ratio | ours: until the last arrived "
          "| Python: until the last arrived | ratio | delivered ours | delivered Python |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with nats_server() as url:
        for name in FIXTURES_BY_NAME:
            for n in (1000, 10000):
                o_call, o_total, o_got = measure("ours", name, n, url)
                p_call, p_total, p_got = measure("python", name, n, url)
                # Nothing arrived: there is no time until the last arrival to compare.
                p_until = f"{p_total:.1f}" if p_got else "nothing arrived"
                ratio = f"{p_total / o_total:.1f}x" if p_got and o_got else "—"
                print(f"| {name} | {n} | {o_call:.1f} | {p_call:.1f} | {p_call / o_call:.1f}x "
                      f"| {o_total:.1f} | {p_until} | {ratio} "
                      f"| {o_got} of {n + 2} | {p_got} of {n + 2} |", flush=True)
    print()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        one(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    sys.exit(main())
