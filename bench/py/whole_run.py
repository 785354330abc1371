"""Whole run: a real playbook of a few hundred events through `ansible-runner run`, with no
plugin, with the Python `ansible-runner-nats` 0.4.0, and with ours; wall time per run.

Both plugins register the entry point name `nats`, so installing both side by side would
leave ansible-runner with whichever it finds last. Each run therefore goes through
`whole_run.py --as <none|python|ours> <ansible-runner args>`, which imports ansible-runner
and sets its plugin table to exactly the plugin being measured before calling its real
`main()`: the same ansible-runner, the same playbook, only the plugin differs.
Run by `make bench`; BENCH_WHOLE_RUNS sets the repetitions (default 7, interleaved).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PEER_DEPS, ROOT, Counter, nats_server

PLAYBOOK = ROOT / "bench" / "playbook"
CONFIGS = ("none", "python", "ours")


def as_runner(which, argv):
    """In the child process: run ansible-runner with exactly one plugin (or none)."""
    if which == "python":
        sys.path.insert(0, str(PEER_DEPS))
    import ansible_runner
    from ansible_runner.__main__ import main

    ansible_runner.plugins.clear()
    if which == "python":
        import ansible_runner_nats

        ansible_runner.plugins["nats"] = ansible_runner_nats
    elif which == "ours":
        import ansible_runner_nats_rs

        ansible_runner.plugins["nats"] = ansible_runner_nats_rs
    return main(argv)


def one_run(which, url, workdir):
    data = Path(workdir) / which
    if data.exists():
        shutil.rmtree(data)
    shutil.copytree(PLAYBOOK, data)
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}:{env.get('PATH', '')}"
    for key in [k for k in env if k.startswith("RUNNER_NATS_")]:
        del env[key]
    if which != "none":
        env["RUNNER_NATS_SUBJECT_ID"] = "bench"
        env["RUNNER_NATS_SERVERS"] = url
    counter = Counter(url, "pub.ansible.runner.bench.*.event")
    try:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--as", which, "run", str(data), "-p", "many.yml",
             "--ident", "run"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"ansible-runner ({which}) failed: {proc.stderr[-2000:]}")
        events = len(list((data / "artifacts" / "run" / "job_events").glob("*.json")))
        got = 0 if which == "none" else counter.wait(events, timeout=30)[0]
        return wall, events, got
    finally:
        counter.close()


def main():
    runs = int(os.environ.get("BENCH_WHOLE_RUNS", "7"))
    walls = {c: [] for c in CONFIGS}
    delivered = {c: [] for c in CONFIGS}
    events = set()
    with nats_server() as url, tempfile.TemporaryDirectory() as workdir:
        one_run("none", url, workdir)  # warm the caches once, not measured
        for _ in range(runs):
            for which in CONFIGS:
                wall, n, got = one_run(which, url, workdir)
                walls[which].append(wall)
                delivered[which].append(got)
                events.add(n)
    n = max(events)
    base = statistics.median(walls["none"])
    print(f"## Whole run: `ansible-runner run` of a {n}-event playbook (s; median of {runs}, "
          "interleaved)\n")
    print("| plugin | median wall | min | max | added to the median without plugin "
          "| events delivered (all runs) |")
    print("| --- | --- | --- | --- | --- | --- |")
    names = {"none": "no plugin", "python": "Python `ansible-runner-nats` 0.4.0",
             "ours": "ours"}
    for which in CONFIGS:
        w = walls[which]
        med = statistics.median(w)
        added = "—" if which == "none" else f"{(med / base - 1) * 100:+.1f} %"
        got = "—" if which == "none" else f"{sum(delivered[which])} of {n * runs}"
        print(f"| {names[which]} | {med:.3f} | {min(w):.3f} | {max(w):.3f} | {added} | {got} |")
    spread = (max(walls["none"]) - min(walls["none"])) / base * 100
    print(f"\nRun-to-run spread without plugin: {spread:.1f} % of the median.\n")
    print(json.dumps({"walls": walls}), file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--as":
        sys.exit(as_runner(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
