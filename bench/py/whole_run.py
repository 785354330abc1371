"""Whole run: a real playbook of a few hundred events through `ansible-runner run`, with no
plugin, with the Python `ansible-runner-nats` 0.4.0, and with ours; wall time per run.

Both plugins register the entry point name `nats`, so installing both side by side would
leave ansible-runner with whichever it finds last. Each run therefore goes through
`whole_run.py --as <none|python|ours> <ansible-runner args>`, which imports ansible-runner
and sets its plugin table to exactly the plugin being measured before calling its real
`main()`: the same ansible-runner, the same playbook, only the plugin differs.
Run by `make bench`; BENCH_WHOLE_RUNS sets the rounds (default 25; each runs the three
configurations back to back, each round starting with the next one). Reported: wall time,
and the CPU time of the ansible-runner process itself (where a plugin runs; far steadier
than wall time on a shared machine).
"""

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

from common import PEER_DEPS, ROOT, Counter, nats_server

PLAYBOOK = ROOT / "bench" / "playbook"
CONFIGS = ("none", "python", "ours")


def as_runner(which, argv):
    """In the child process: run ansible-runner with exactly one plugin (or none)."""
    import atexit

    def report():
        # The CPU time of this process (all its threads, the plugin's included), not of the
        # playbook's processes: where a plugin's cost lands.
        r = resource.getrusage(resource.RUSAGE_SELF)
        # The threads other than this (main) one, exited ones included: a plugin's own
        # background work (our writer and reader, the Python plugin's asyncio loop).
        m = resource.getrusage(resource.RUSAGE_THREAD)
        total, main_thread = r.ru_utime + r.ru_stime, m.ru_utime + m.ru_stime
        print(f"RUNNER_CPU {total:.6f} {total - main_thread:.6f}", file=sys.stderr)

    # Time spent inside the plugin's handlers, on the thread that processes the events:
    # what the plugin holds up of the run (the terminal status's flush included).
    spent = [0, 0]

    def timed(handler):
        def call(runner_config, data):
            t = time.perf_counter_ns()
            try:
                return handler(runner_config, data)
            finally:
                spent[0] += time.perf_counter_ns() - t
                spent[1] += 1
        return call

    def report_handlers():
        print(f"PLUGIN_TIME {spent[0] / 1e9:.6f} {spent[1]}", file=sys.stderr)

    atexit.register(report)
    atexit.register(report_handlers)
    if which == "python":
        sys.path.insert(0, str(PEER_DEPS))
    import ansible_runner
    from ansible_runner.__main__ import main

    ansible_runner.plugins.clear()
    plugin = None
    if which == "python":
        import ansible_runner_nats as plugin
    elif which == "ours":
        import ansible_runner_nats_rs as plugin
    if plugin is not None:
        ansible_runner.plugins["nats"] = types.SimpleNamespace(
            status_handler=timed(plugin.status_handler), event_handler=timed(plugin.event_handler))
    return main(argv)


def import_time(which, rounds=7):
    """Median seconds to import the plugin in a fresh interpreter that already imported what
    ansible-runner itself imports first (logging, json, socket, threading, and
    importlib.metadata, with which it lists the plugins it then imports). Ours is
    installed in the virtualenv, so ansible-runner imports it in every configuration of the
    runs above: its import cost is measured here instead."""
    module = {"python": "ansible_runner_nats", "ours": "ansible_runner_nats_rs"}[which]
    code = "import sys, time, logging, json, socket, threading, os, signal, codecs\n"
    code += "import importlib.metadata\n"
    if which == "python":
        code += f"sys.path.insert(0, {str(PEER_DEPS)!r})\n"
    code += f"t = time.perf_counter()\nimport {module}\nprint(time.perf_counter() - t)\n"
    times = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  check=True).stdout) for _ in range(rounds)]
    return statistics.median(times)


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
        cpu, threads = [tuple(map(float, line.split()[1:3])) for line in proc.stderr.splitlines()
                        if line.startswith("RUNNER_CPU ")][-1]
        in_handlers = [float(line.split()[1]) for line in proc.stderr.splitlines()
                       if line.startswith("PLUGIN_TIME ")][-1]
        events = len(list((data / "artifacts" / "run" / "job_events").glob("*.json")))
        got = 0 if which == "none" else counter.wait(events, timeout=30)[0]
        return wall, cpu, threads, in_handlers, events, got
    finally:
        counter.close()


def main():
    runs = int(os.environ.get("BENCH_WHOLE_RUNS", "25"))
    walls = {c: [] for c in CONFIGS}
    cpus = {c: [] for c in CONFIGS}
    threads = {c: [] for c in CONFIGS}
    delivered = {c: [] for c in CONFIGS}
    handlers = {c: [] for c in CONFIGS}
    events = set()
    with nats_server() as server, tempfile.TemporaryDirectory() as workdir:
        url = server.url
        one_run("none", url, workdir)  # warm the caches once, not measured
        for r in range(runs):
            # Each round starts with the next configuration: with a fixed order, a machine
            # that slows down (or speeds up) over the rounds charges its drift to whichever
            # comes last (seen here: the no-plugin run's CPU rose from 0.19 to 0.32 s over
            # 30 runs, which a fixed order would have added to ours, the last, as ~9 ms).
            k = r % len(CONFIGS)
            for which in CONFIGS[k:] + CONFIGS[:k]:
                wall, cpu, thread_cpu, in_handlers, n, got = one_run(which, url, workdir)
                handlers[which].append(in_handlers)
                walls[which].append(wall)
                cpus[which].append(cpu)
                threads[which].append(thread_cpu)
                delivered[which].append(got)
                events.add(n)
    n = max(events)
    med = {c: statistics.median(walls[c]) for c in CONFIGS}
    med_cpu = {c: statistics.median(cpus[c]) for c in CONFIGS}

    def paired(which, series):
        # Each round runs the three configurations back to back: comparing within a round
        # cancels the machine's slower drifts, and rotating the order cancels what is left
        # of them between neighbours. Median and interquartile range of the rounds.
        diffs = [(x / base - 1) * 100 for x, base in zip(series[which], series["none"])]
        q1, q2, q3 = statistics.quantiles(diffs, n=4)
        return f"{q2:+.1f} % ({q1:+.1f} to {q3:+.1f})"

    print(f"## Whole run: `ansible-runner run` of a {n}-event playbook (median of {runs} rounds; "
          "each round runs the three back to back, in an order rotated from round to round)\n")
    print("| plugin | wall (s) | min | max | added wall: medians | added wall: paired (IQR) | "
          "CPU of the ansible-runner process (s) | added CPU: paired (IQR) | CPU of threads besides "
          "the main one (ms) | events delivered (all runs) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    names = {"none": "no plugin", "python": "Python `ansible-runner-nats` 0.4.0",
             "ours": "ours"}
    for which in CONFIGS:
        w = walls[which]
        if which == "none":
            added = paired_wall = paired_cpu = got = "—"
        else:
            added = f"{(med[which] / med['none'] - 1) * 100:+.1f} %"
            paired_wall = paired(which, walls)
            paired_cpu = paired(which, cpus)
            got = f"{sum(delivered[which])} of {n * runs}"
        print(f"| {names[which]} | {med[which]:.3f} | {min(w):.3f} | {max(w):.3f} | {added} "
              f"| {paired_wall} | {med_cpu[which]:.3f} | {paired_cpu} "
              f"| {statistics.median(threads[which]) * 1000:.1f} | {got} |")
    spread = (max(walls["none"]) - min(walls["none"])) / med["none"] * 100
    print(f"\nRun-to-run spread without plugin: {spread:.1f} % of the median wall time.\n")

    # What each plugin costs the run, measured directly rather than as a difference of two
    # noisy wall times: the time the runner's event thread spends in its handlers, its
    # import, and the CPU of its own threads (which compete for the machine's cores).
    print(f"### What each plugin costs the run (ms per run, medians of {runs}; "
          "share of the no-plugin median wall time)\n")
    print("| plugin | in its handlers, on the runner's event thread | import | its own threads' CPU "
          "| sum | sum / wall without plugin |")
    print("| --- | --- | --- | --- | --- | --- |")
    for which in ("python", "ours"):
        h = statistics.median(handlers[which])
        imp = import_time(which)
        thr = statistics.median(threads[which])
        total = h + imp + thr
        print(f"| {names[which]} | {h * 1000:.1f} | {imp * 1000:.1f} | {thr * 1000:.1f} "
              f"| {total * 1000:.1f} | {total / med['none'] * 100:.2f} % |")
    print()
    print(json.dumps({"walls": walls, "cpus": cpus}), file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--as":
        sys.exit(as_runner(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
