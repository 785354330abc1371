"""What the plugin says, and to whom: lines a host's logging must not lose, secrets they
must not carry, and the runs a broken stream or the interpreter's exit closes. Each case
runs in a Python of its own (logging and the process-wide emitter are per process), with
a real nats-server and an independent nats-py subscriber."""

import json
import subprocess
import sys

import pytest

from e2e_support import CLIENT_THREADS, NatsServer, Subscriber, base_env


@pytest.fixture
def server(tmp_path):
    s = NatsServer(tmp_path)
    yield s
    s.stop()


def run(code, url, subject_id="rep", **extra_env):
    """Runs `code` in a Python of its own, the plugin on for `url` (with `subject_id`, or
    none when it is None); it must succeed."""
    ids = {} if subject_id is None else {"RUNNER_NATS_SUBJECT_ID": subject_id}
    env = base_env(RUNNER_NATS_SERVERS=url, **ids, **extra_env)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


PRELUDE = (
    "import logging, types, ansible_runner_nats_rs as p\n"
    "def cfg(**settings):\n"
    "    return types.SimpleNamespace(settings=settings)\n"
)


def subjects(messages, ident, kind):
    return [json.loads(m.data) for m in messages
            if m.subject == f"pub.ansible.runner.rep.{ident}.{kind}"]


def test_a_broken_stream_closes_the_runs_of_its_own_configuration_only(server):
    sub = Subscriber(server.url, "pub.ansible.runner.rep.>")
    try:
        secret = "s3cr3t-aws-key"
        code = PRELUDE + (
            "a, b = cfg(), cfg()\n"
            "p.status_handler(a, {'status': 'starting', 'runner_ident': 'broken'})\n"
            "p.status_handler(b, {'status': 'starting', 'runner_ident': 'healthy'})\n"
            # What ansible-runner's Processor sends when a worker line is not JSON.
            "line = '{\"status\": \"starting\", \"env\": {\"AWS_SECRET_ACCESS_KEY\": \"%s\"'\n"
            "p.status_handler(a, {'status': 'error', 'job_explanation':\n"
            "    'Line with invalid JSON data: ' + line[:1000]})\n"
            "p.event_handler(b, {'event': 'runner_on_ok', 'runner_ident': 'healthy'})\n"
            "p.status_handler(b, {'status': 'successful', 'runner_ident': 'healthy'})\n"
        ) % secret
        proc = run(code, server.url)
        assert secret not in proc.stderr, proc.stderr
        assert "Line with invalid JSON data (the rest not shown)" in proc.stderr, proc.stderr
        assert "1 open runs of this stream closed" in proc.stderr, proc.stderr
        assert "came after the run ended" not in proc.stderr, proc.stderr
        got = sub.wait_for(4)
        assert [s["status"] for s in subjects(got, "healthy", "status")] == ["starting", "successful"]
        assert [e["event"] for e in subjects(got, "healthy", "event")] == ["runner_on_ok"]
        assert [s["status"] for s in subjects(got, "broken", "status")] == ["starting"]
    finally:
        sub.close()


def test_a_host_handler_that_raises_costs_its_line_only():
    code = PRELUDE + (
        "class Flaky(logging.Handler):\n"
        "    calls = 0\n"
        "    def emit(self, record):\n"
        "        Flaky.calls += 1\n"
        "        if Flaky.calls == 1:\n"
        "            raise RuntimeError('log shipper down')\n"
        "        print('shown:', record.getMessage())\n"
        "logging.getLogger().addHandler(Flaky())\n"
        "c = cfg()\n"
        # Two problems of the configuration, two lines: the first handler call raises.
        "p.status_handler(c, {'status': 'starting', 'runner_ident': 'flaky'})\n"
        "p.status_handler(c, {'status': 'failed', 'runner_ident': 'flaky'})\n"
        "print('failures', p.stats()['handler_failures'])\n"
    )
    proc = run(code, "nats://127.0.0.1:1", RUNNER_NATS_CONNECT_TIMEOUT="soon",
               RUNNER_NATS_PING_INTERVAL="often", RUNNER_NATS_FLUSH_TIMEOUT="0.2")
    assert "shown: run flaky: RUNNER_NATS_PING_INTERVAL" in proc.stdout, proc.stdout
    assert "failures 0" in proc.stdout, proc.stdout
    assert "handler failed" not in proc.stderr, proc.stderr


def test_a_host_at_info_sees_the_run_summary_and_a_muted_library_stays_muted(server):
    at_info = PRELUDE + (
        "logging.basicConfig(level=logging.INFO)\n"
        "c = cfg()\n"
        "p.status_handler(c, {'status': 'starting', 'runner_ident': 'info'})\n"
        "p.status_handler(c, {'status': 'successful', 'runner_ident': 'info'})\n"
    )
    proc = run(at_info, server.url)
    assert "run info: 2 messages published" in proc.stderr, proc.stderr
    muted = PRELUDE + (
        "logging.basicConfig(level=logging.INFO)\n"
        "logging.getLogger('ansible-runner').setLevel(logging.CRITICAL)\n"
        "c = cfg()\n"
        "p.status_handler(c, {'status': 'starting', 'runner_ident': 'muted'})\n"
    )
    proc = run(muted, server.url, RUNNER_NATS_HEADERS="a=b,c")
    assert proc.stderr == "", proc.stderr


def test_the_fallback_speaks_when_the_root_handler_filters_our_records_out():
    code = PRELUDE + (
        "root = logging.StreamHandler()\n"
        "root.addFilter(logging.Filter('myapp'))\n"
        "logging.getLogger().addHandler(root)\n"
        "p.status_handler(cfg(), {'status': 'starting', 'runner_ident': 'filtered'})\n"
    )
    proc = run(code, "nats://127.0.0.1:1", RUNNER_NATS_HEADERS="a=b,c",
               RUNNER_NATS_FLUSH_TIMEOUT="0.2")
    assert proc.stderr.count("item 2 (not shown) is not name=value") == 1, proc.stderr


def test_an_unserializable_event_is_said_once_and_counted(server):
    sub = Subscriber(server.url, "pub.ansible.runner.rep.>")
    try:
        code = PRELUDE + (
            "c = cfg()\n"
            "p.status_handler(c, {'status': 'starting', 'runner_ident': 'cycle'})\n"
            "for i in range(3):\n"
            "    e = {'event': 'runner_on_ok', 'runner_ident': 'cycle'}\n"
            "    e['self'] = e\n"
            "    p.event_handler(c, e)\n"
            "p.status_handler(c, {'status': 'successful', 'runner_ident': 'cycle'})\n"
            "print('failed', p.stats()['dumps_failed'])\n"
        )
        proc = run(code, server.url)
        assert "failed 3" in proc.stdout
        assert proc.stderr.count("could not be serialized") == 1, proc.stderr
        events = subjects(sub.wait_for(5), "cycle", "event")
        assert [e["error"] for e in events] == ["unserializable event"] * 3
    finally:
        sub.close()


def test_settings_json_cannot_carry_are_ours_only_if_they_are_nats_settings(server):
    sub = Subscriber(server.url, "pub.ansible.runner.>")
    try:
        code = PRELUDE + (
            # Not ours: ignored. The subject id comes from the settings.
            "c = cfg(idle_timeout=float('inf'), nats_subject_id='fromsettings')\n"
            "p.status_handler(c, {'status': 'starting', 'runner_ident': 'inf'})\n"
            "p.status_handler(c, {'status': 'successful', 'runner_ident': 'inf'})\n"
            # Ours: said, and ignored.
            "d = cfg(nats_options={'connect_timeout': float('nan')})\n"
            "p.status_handler(d, {'status': 'starting', 'runner_ident': 'nan'})\n"
            "p.status_handler(d, {'status': 'successful', 'runner_ident': 'nan'})\n"
        )
        proc = run(code, server.url, subject_id=None)
        got = sub.wait_for(2)
        assert {m.subject for m in got} == {"pub.ansible.runner.fromsettings.inf.status"}
        assert "run nan: runner settings: the nats_* settings hold a value JSON has no word for" \
            in proc.stderr, proc.stderr
    finally:
        sub.close()


def test_a_run_left_open_at_exit_is_flushed_and_said(server):
    sub = Subscriber(server.url, "pub.ansible.runner.rep.>")
    try:
        code = PRELUDE + (
            "c = cfg()\n"
            "p.status_handler(c, {'status': 'starting', 'runner_ident': 'open'})\n"
            "for i in range(100):\n"
            "    p.event_handler(c, {'event': 'runner_on_ok', 'runner_ident': 'open',\n"
            "                        'counter': i, 'stdout': 'x' * 1000})\n"
            # No terminal status: ansible-runner raised, or was interrupted.
        )
        proc = run(code, server.url)
        assert "run open ended without a terminal status; closed with 101 messages published" \
            in proc.stderr, proc.stderr
        got = sub.wait_for(101)
        assert len(subjects(got, "open", "event")) == 100
    finally:
        sub.close()


# ansible-runner's RunnerConfig (and the MockConfig of `ansible-runner process`) take weak
# references; SimpleNamespace does not.
ABANDONING = PRELUDE + "import gc, os, sys, time\n" + CLIENT_THREADS + (
    "class Config:\n"
    "    settings = {}\n"
    "def wait_until(what, cond, timeout=20):\n"
    "    deadline = time.monotonic() + timeout\n"
    "    while not cond():\n"
    "        assert time.monotonic() < deadline, what\n"
    "        time.sleep(0.01)\n"
)


def test_a_run_whose_configuration_object_is_collected_is_closed_after_the_grace(server):
    sub = Subscriber(server.url, "pub.ansible.runner.rep.>")
    try:
        code = ABANDONING + (
            "a = Config()\n"
            "p.status_handler(a, {'status': 'starting', 'runner_ident': 'dropped'})\n"
            "for i in range(3):\n"
            "    p.event_handler(a, {'event': 'runner_on_ok', 'runner_ident': 'dropped'})\n"
            "wait_until('connected', lambda: len(client_threads()) == 3)\n"
            # ansible-runner raised before the terminal status, and the host let go of it.
            "del a\n"
            "gc.collect()\n"
            "wait_until('closed', lambda: p.stats()['abandoned'] == 1)\n"
            "wait_until('its threads ended', lambda: client_threads() == ['nats-reaper'])\n"
            "print('CLOSED', file=sys.stderr, flush=True)\n"
            # The reaper's lines come with the next handler call.
            "p.status_handler(Config(), {'status': 'starting', 'runner_ident': 'next'})\n"
            "print('MARK', file=sys.stderr, flush=True)\n"
        )
        proc = run(code, server.url, RUNNER_NATS_ABANDONED_GRACE="0.2")
        _, _, said = proc.stderr.partition("CLOSED")
        said, _, after = said.partition("MARK")
        assert "the runner_config of 1 open runs (dropped) was garbage-collected before their " \
            "terminal status (ansible-runner raised?); flushed and closed them" in said, proc.stderr
        assert "run dropped ended without a terminal status; closed with 4 messages published" \
            in said, proc.stderr
        # Not closed a second time at exit.
        assert "dropped" not in after, proc.stderr
        got = sub.wait_for(4)
        assert len(subjects(got, "dropped", "event")) == 3
    finally:
        sub.close()


def test_a_call_within_the_grace_keeps_the_run_of_a_collected_configuration_open(server):
    # A caller that makes a configuration object per call: its run goes on past the grace.
    sub = Subscriber(server.url, "pub.ansible.runner.rep.>")
    try:
        code = ABANDONING + (
            "a = Config()\n"
            "p.status_handler(a, {'status': 'starting', 'runner_ident': 'renewed'})\n"
            "del a\n"
            "gc.collect()\n"
            "b = Config()\n"
            "p.event_handler(b, {'event': 'runner_on_ok', 'runner_ident': 'renewed'})\n"
            # Nothing to wait for: the grace passing is the point.
            "time.sleep(2.0)\n"
            "p.event_handler(b, {'event': 'runner_on_ok', 'runner_ident': 'renewed'})\n"
            "p.status_handler(b, {'status': 'successful', 'runner_ident': 'renewed'})\n"
            "print(p.stats()['abandoned'], p.stats()['late'])\n"
        )
        proc = run(code, server.url, RUNNER_NATS_ABANDONED_GRACE="1.0")
        assert proc.stdout.split() == ["0", "0"], proc.stderr
        assert "garbage-collected" not in proc.stderr, proc.stderr
        assert "ended without a terminal status" not in proc.stderr, proc.stderr
        got = sub.wait_for(4)
        assert [s["status"] for s in subjects(got, "renewed", "status")] == ["starting", "successful"]
        assert len(subjects(got, "renewed", "event")) == 2
    finally:
        sub.close()


def test_the_end_of_an_object_that_no_longer_owns_a_run_changes_nothing(server):
    # A retry under the same ident while the first attempt's Runner is still alive (in a
    # cycle), and a run ended through another object than the one that opened it.
    sub = Subscriber(server.url, "pub.ansible.runner.rep.>")
    try:
        code = ABANDONING + (
            "first = Config()\n"
            "first.me = first\n"
            "p.status_handler(first, {'status': 'starting', 'runner_ident': 'retried'})\n"
            "del first\n"
            "retry = Config()\n"
            "p.status_handler(retry, {'status': 'starting', 'runner_ident': 'retried'})\n"
            "a, b = Config(), Config()\n"
            "p.status_handler(a, {'status': 'starting', 'runner_ident': 'moved'})\n"
            "p.status_handler(b, {'status': 'successful', 'runner_ident': 'moved'})\n"
            "del a\n"
            "gc.collect()\n"
            # The retry's long task is quiet past the grace.
            "time.sleep(1.0)\n"
            "p.event_handler(retry, {'event': 'runner_on_ok', 'runner_ident': 'retried'})\n"
            "p.status_handler(retry, {'status': 'successful', 'runner_ident': 'retried'})\n"
            "print(p.stats()['abandoned'], p.stats()['late'])\n"
        )
        proc = run(code, server.url, RUNNER_NATS_ABANDONED_GRACE="0.2")
        assert proc.stdout.split() == ["0", "0"], proc.stderr
        assert "garbage-collected" not in proc.stderr, proc.stderr
        got = sub.wait_for(6)
        assert [s["status"] for s in subjects(got, "retried", "status")] == \
            ["starting", "starting", "successful"]
        assert len(subjects(got, "retried", "event")) == 1
    finally:
        sub.close()


def test_a_forked_child_closes_the_runs_it_abandons(server):
    sub = Subscriber(server.url, "pub.ansible.runner.rep.>")
    try:
        code = ABANDONING + (
            "import json\n"
            "parent = Config()\n"
            # The parent has its own reaper by now.
            "p.status_handler(parent, {'status': 'starting', 'runner_ident': 'parent'})\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    c = Config()\n"
            "    p.status_handler(c, {'status': 'starting', 'runner_ident': 'child'})\n"
            "    p.event_handler(c, {'event': 'runner_on_ok', 'runner_ident': 'child'})\n"
            # The parent's object, inherited: the parent's run is not the child's to close
            # (its copy has no client threads).
            "    del parent\n"
            "    del c\n"
            "    gc.collect()\n"
            "    wait_until('closed', lambda: p.stats()['abandoned'] == 1)\n"
            "    time.sleep(0.5)\n"
            "    assert p.stats()['abandoned'] == 1, p.stats()\n"
            "    said = p._native.take_pending()\n"
            "    print(json.dumps({'said': [line for _, line in said]}), flush=True)\n"
            "    os._exit(0)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "assert status == 0, status\n"
            "p.status_handler(parent, {'status': 'successful', 'runner_ident': 'parent'})\n"
            "print(p.stats()['abandoned'])\n"
        )
        proc = run(code, server.url, RUNNER_NATS_ABANDONED_GRACE="0.2")
        child, parent = proc.stdout.strip().splitlines()
        said = json.loads(child)["said"]
        assert any("(child) was garbage-collected" in line for line in said), said
        assert any("run child ended without a terminal status; closed with 2 messages" in line
                   for line in said), said
        assert parent == "0"
        assert "panicked" not in proc.stderr, proc.stderr
        got = sub.wait_for(4)
        assert len(subjects(got, "child", "status")) == 1
        assert len(subjects(got, "child", "event")) == 1
        assert [s["status"] for s in subjects(got, "parent", "status")] == ["starting", "successful"]
    finally:
        sub.close()


def test_children_forked_while_the_parents_threads_publish_publish_their_own_runs(server):
    # A thread of the parent's inside a handler call at the fork can leave one of the
    # emitter's locks held for good in the child: the child publishes through its own.
    sub = Subscriber(server.url, "pub.ansible.runner.rep.>")
    try:
        code = ABANDONING + (
            "import json, signal, threading\n"
            "stop = False\n"
            "def churn(w):\n"
            "    i = 0\n"
            "    while not stop:\n"
            "        c, ident = Config(), f'parent-{w}-{i}'\n"
            "        p.status_handler(c, {'status': 'starting', 'runner_ident': ident})\n"
            "        p.event_handler(c, {'event': 'runner_on_ok', 'runner_ident': ident})\n"
            # Left open: the reaper closes them, while the next ones connect.
            "        del c\n"
            "        i += 1\n"
            "threads = [threading.Thread(target=churn, args=(w,)) for w in range(3)]\n"
            "for t in threads: t.start()\n"
            "ended = []\n"
            "for k in range(8):\n"
            "    time.sleep(0.02)\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        signal.alarm(5)\n"
            "        c, ident = Config(), f'child-{k}'\n"
            "        p.status_handler(c, {'status': 'starting', 'runner_ident': ident})\n"
            "        p.event_handler(c, {'event': 'runner_on_ok', 'runner_ident': ident})\n"
            "        p.status_handler(c, {'status': 'successful', 'runner_ident': ident})\n"
            # Half of them through the interpreter's exit, and so the exit hook.
            "        sys.exit(0) if k % 2 else os._exit(0)\n"
            "    ended.append(os.waitpid(pid, 0)[1])\n"
            "stop = True\n"
            "for t in threads: t.join()\n"
            "print(json.dumps(ended))\n"
        )
        proc = run(code, server.url, RUNNER_NATS_ABANDONED_GRACE="0.1")
        # 0 for each child; SIGALRM (14) for a child that hung.
        assert json.loads(proc.stdout) == [0] * 8, proc.stderr

        def ended(messages, k):
            return [s["status"] for s in subjects(messages, f"child-{k}", "status")]

        # Both statuses of every child, then a quiet moment for any extra one.
        sub.collect_until(lambda messages: all(len(ended(messages, k)) >= 2 for k in range(8)))
        got = sub.settle()
        for k in range(8):
            assert ended(got, k) == ["starting", "successful"], k
    finally:
        sub.close()


def test_a_forked_childs_open_runs_are_flushed_at_its_exit(server):
    sub = Subscriber(server.url, "pub.ansible.runner.rep.>")
    try:
        code = ABANDONING + (
            "parent = Config()\n"
            "p.status_handler(parent, {'status': 'starting', 'runner_ident': 'elder'})\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    c = Config()\n"
            "    p.status_handler(c, {'status': 'starting', 'runner_ident': 'younger'})\n"
            "    for i in range(2):\n"
            "        p.event_handler(c, {'event': 'runner_on_ok', 'runner_ident': 'younger'})\n"
            # No terminal status; the interpreter's exit, not os._exit.
            "    sys.exit(0)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "assert status == 0, status\n"
            "p.status_handler(parent, {'status': 'successful', 'runner_ident': 'elder'})\n"
        )
        proc = run(code, server.url)
        assert "run younger ended without a terminal status; closed with 3 messages published" \
            in proc.stderr, proc.stderr
        # The parent's run is the parent's: ended once, by its own status.
        assert "elder ended without" not in proc.stderr, proc.stderr
        assert "panicked" not in proc.stderr, proc.stderr
        got = sub.wait_for(5)
        assert len(subjects(got, "younger", "event")) == 2
        assert [s["status"] for s in subjects(got, "elder", "status")] == ["starting", "successful"]
    finally:
        sub.close()


def test_a_process_forked_deeper_than_the_emitters_go_says_so_and_publishes_nothing(server):
    # Each of 16 levels of forks gets an emitter of its own; a process forked deeper would
    # share its parent's, whose locks may be held for good: it publishes nothing, and says so.
    sub = Subscriber(server.url, "pub.ansible.runner.rep.>")
    try:
        code = PRELUDE + (
            "import os, sys\n"
            "depth = 0\n"
            "while True:\n"
            "    c = cfg()\n"
            "    for s in ('starting', 'successful'):\n"
            "        p.status_handler(c, {'status': s, 'runner_ident': f'depth-{depth}'})\n"
            "    if depth == 18:\n"
            "        os._exit(0)\n"
            "    pid = os.fork()\n"
            "    if pid:\n"
            "        _, status = os.waitpid(pid, 0)\n"
            "        if depth:\n"
            "            os._exit(os.waitstatus_to_exitcode(status))\n"
            "        sys.exit(os.waitstatus_to_exitcode(status))\n"
            "    depth += 1\n"
        )
        proc = run(code, server.url)
        assert proc.stderr.count(
            "this process is forked more than 16 levels deep from the one that imported the "
            "plugin: nothing is published here") == 1, proc.stderr
        assert "panicked" not in proc.stderr, proc.stderr
        got = sub.wait_for(2 * 17)
        got = sub.settle()
        idents = sorted({m.subject.split(".")[4] for m in got})
        assert idents == sorted(f"depth-{d}" for d in range(17)), idents
        assert len(got) == 2 * 17
    finally:
        sub.close()


def test_an_unreadable_grace_is_said_and_the_default_used(server):
    code = ABANDONING + (
        "a = Config()\n"
        "p.status_handler(a, {'status': 'starting', 'runner_ident': 'graceless'})\n"
        "del a\n"
        "gc.collect()\n"
    )
    proc = run(code, server.url, RUNNER_NATS_ABANDONED_GRACE="soon")
    assert proc.stderr.count("RUNNER_NATS_ABANDONED_GRACE is not a number of seconds") == 1, \
        proc.stderr
    # Closed at exit, before the grace ran out.
    assert "run graceless ended without a terminal status" in proc.stderr, proc.stderr


def test_a_host_name_python_cannot_tell_is_said_not_silently_localhost(server):
    sub = Subscriber(server.url, "pub.ansible.runner.>")
    try:
        code = PRELUDE + (
            "import socket\n"
            "def broken():\n"
            "    raise OSError('no name')\n"
            "socket.gethostname = broken\n"
            "c = cfg()\n"
            "p.status_handler(c, {'status': 'starting', 'runner_ident': 'nohost'})\n"
            "p.status_handler(c, {'status': 'successful', 'runner_ident': 'nohost'})\n"
        )
        proc = run(code, server.url, subject_id="hostname")
        assert ("run nohost: subject id \"hostname\": socket.gethostname() failed or gave no "
                "text; using localhost") in proc.stderr, proc.stderr
        got = sub.wait_for(2)
        assert {m.subject for m in got} == {"pub.ansible.runner.localhost.nohost.status"}
    finally:
        sub.close()


def test_a_counting_filter_on_the_hosts_handler_loses_nothing():
    # A filter that lets each message through once (a dedupe, a rate limit) must see our
    # record only when it is really emitted: asked beforehand, it would drop the real one.
    code = PRELUDE + (
        "import sys\n"
        "class Once(logging.Filter):\n"
        "    seen = set()\n"
        "    def filter(self, record):\n"
        "        m = record.getMessage()\n"
        "        if m in self.seen:\n"
        "            return False\n"
        "        self.seen.add(m)\n"
        "        return True\n"
        "h = logging.StreamHandler(sys.stdout)\n"
        "h.addFilter(Once())\n"
        "logging.getLogger().addHandler(h)\n"
        "p.status_handler(cfg(), {'status': 'starting', 'runner_ident': 'once'})\n"
        "p.logger.handlers[0].setStream(sys.stdout)\n"
    )
    proc = run(code, "nats://127.0.0.1:1", RUNNER_NATS_HEADERS="a=b,c",
               RUNNER_NATS_FLUSH_TIMEOUT="0.2")
    assert "item 2 (not shown) is not name=value" in proc.stdout + proc.stderr, (
        proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_run_opened_by_an_event_is_one_of_its_streams_runs(server):
    sub = Subscriber(server.url, "pub.ansible.runner.rep.>")
    try:
        code = PRELUDE + (
            "a = cfg()\n"
            # No `starting` status seen: the run begins with an event.
            "for i in range(3):\n"
            "    p.event_handler(a, {'event': 'runner_on_ok', 'runner_ident': 'evfirst'})\n"
            "p.status_handler(a, {'status': 'error', 'job_explanation': 'Worker died'})\n"
        )
        proc = run(code, server.url)
        assert "1 open runs of this stream closed" in proc.stderr, proc.stderr
        assert "run evfirst ended without a terminal status; closed with 3 messages" \
            in proc.stderr, proc.stderr
        assert len(subjects(sub.wait_for(3), "evfirst", "event")) == 3
    finally:
        sub.close()
