"""Plugin cost per event: ours (ansible-runner-nats-rs) against the Python
`ansible-runner-nats` 0.4.0, both imported into this one process and driven the same way:
status_handler(starting), N x event_handler, status_handler(successful), with an
independent subscriber (`arn-bench count`) counting what arrived. Run by `make bench`.
"""

import json
import os
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


def main():
    sys.path.insert(0, str(PEER_DEPS))
    import ansible_runner_nats as python_plugin
    import ansible_runner_nats_rs as ours

    fixtures = {
        "1.4 KB": json.loads((FIXTURES / "event_item.json").read_text()),
        "38 KB": json.loads((FIXTURES / "event_loop60.json").read_text()),
    }
    print("## Plugin cost per event (µs; both plugins in one process, one server, a subscriber process counting)\n")
    print("| event | N | ours: per call | Python: per call | ratio | ours: until the last arrived "
          "| Python: until the last arrived | ratio | delivered ours | delivered Python |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with nats_server() as url:
        for name, event in fixtures.items():
            for n in (1000, 10000):
                o_call, o_total, o_got = run(ours, url, event, n, "rs")
                p_call, p_total, p_got = run(python_plugin, url, event, n, "py")
                # Nothing arrived: there is no time until the last arrival to compare.
                p_until = f"{p_total:.1f}" if p_got else "nothing arrived"
                ratio = f"{p_total / o_total:.1f}x" if p_got and o_got else "—"
                print(f"| {name} | {n} | {o_call:.1f} | {p_call:.1f} | {p_call / o_call:.1f}x "
                      f"| {o_total:.1f} | {p_until} | {ratio} "
                      f"| {o_got} of {n + 2} | {p_got} of {n + 2} |", flush=True)
    print()


if __name__ == "__main__":
    sys.exit(main())
