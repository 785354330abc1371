"""The plugin end to end: real playbooks through real ansible-runner, a real nats-server,
and an independent nats-py subscriber checking what arrived."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e_support import (
    CLIENT_THREADS,
    VENV_BIN,
    NatsServer,
    Subscriber,
    base_env,
    free_port,
    job_events,
    private_data_dir,
    run_cli,
)

HEADERS = "producer=ansible-runner,foo=bar"


@pytest.fixture
def server(tmp_path):
    s = NatsServer(tmp_path)
    yield s
    s.stop()


def plugin_env(url):
    return base_env(RUNNER_NATS_SUBJECT_ID="e2e", RUNNER_NATS_SERVERS=url, RUNNER_NATS_HEADERS=HEADERS)


def run_python(code, url, timeout, **extra_env):
    """Runs `code` in a Python of its own with the plugin configured for `url` (and
    `extra_env`); it must succeed."""
    proc = subprocess.run([sys.executable, "-c", code], env=dict(plugin_env(url), **extra_env),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def by_kind(messages, ident):
    events = [m for m in messages if m.subject == f"pub.ansible.runner.e2e.{ident}.event"]
    statuses = [m for m in messages if m.subject == f"pub.ansible.runner.e2e.{ident}.status"]
    return events, statuses


def assert_every_event_once(pdd, ident, sub):
    expected = job_events(pdd, ident)
    assert expected, "the run wrote no job_events"
    got = sub.wait_for(len(expected) + 3)
    got = sub.settle()
    events, statuses = by_kind(got, ident)
    assert len(events) + len(statuses) == len(got), [m.subject for m in got]
    received = {}
    for m in events:
        data = json.loads(m.data)
        received.setdefault(data["uuid"], []).append(data)
    for event in expected:
        copies = received.get(event["uuid"], [])
        assert len(copies) == 1, f"event {event['counter']} arrived {len(copies)} times"
        assert copies[0] == event
    assert len(events) == len(expected)
    assert [json.loads(m.data)["status"] for m in statuses] == ["starting", "running", "successful"]
    for m in got:
        assert m.headers == {"producer": "ansible-runner", "foo": "bar"}, m.headers
    return got


def test_cli_run_publishes_every_event_exactly_once(tmp_path, server):
    sub = Subscriber(server.url, "pub.ansible.runner.>")
    try:
        pdd = private_data_dir(tmp_path)
        env = plugin_env(server.url)
        proc, _ = run_cli(pdd, env, "cli-run")
        assert proc.returncode == 0, proc.stderr
        assert "ansible-runner.nats" not in proc.stderr, "no noise on success"
        assert_every_event_once(pdd, "cli-run", sub)
    finally:
        sub.close()


def test_cli_run_configured_by_the_private_data_dirs_settings_file(tmp_path, server):
    # The runner settings as operators write them: env/settings (YAML) in the private
    # data dir, no RUNNER_NATS_* variable at all.
    sub = Subscriber(server.url, "pub.ansible.runner.>")
    try:
        pdd = private_data_dir(tmp_path)
        (pdd / "env").mkdir()
        (pdd / "env" / "settings").write_text(
            "nats_subject_id: e2e\n"
            f"nats_options:\n  servers: [\"{server.url}\"]\n  name: from-settings\n"
            "nats_headers:\n  producer: ansible-runner\n  foo: bar\n"
        )
        proc, _ = run_cli(pdd, base_env(), "settings-file")
        assert proc.returncode == 0, proc.stderr
        assert "ansible-runner.nats" not in proc.stderr, proc.stderr
        assert_every_event_once(pdd, "settings-file", sub)
    finally:
        sub.close()


def test_python_api_run(tmp_path, server):
    sub = Subscriber(server.url, "pub.ansible.runner.>")
    try:
        pdd = private_data_dir(tmp_path)
        code = (
            "import ansible_runner, sys\n"
            f"r = ansible_runner.run(private_data_dir={str(pdd)!r}, playbook='site.yml', ident='api-run', quiet=True)\n"
            "sys.exit(0 if r.status == 'successful' else 1)\n"
        )
        run_python(code, server.url, timeout=300)
        assert_every_event_once(pdd, "api-run", sub)
    finally:
        sub.close()


def test_a_run_ansible_runner_gave_up_on_is_closed_once_the_host_lets_go_of_it(tmp_path, server):
    # A cancel callback that raises makes ansible_runner.run() raise with no terminal
    # status. In a long-lived host the run must not keep its connection and threads for the
    # life of the process: once the Runner is collected (and the grace passed) it is
    # flushed and closed, and what it published is delivered.
    sub = Subscriber(server.url, "pub.ansible.runner.>")
    try:
        pdd = private_data_dir(tmp_path)
        code = (
            "import gc, json, os, sys, time, ansible_runner, ansible_runner_nats_rs as p\n"
            + CLIENT_THREADS +
            "def broken():\n"
            "    raise RuntimeError('the cancel check broke')\n"
            "try:\n"
            f"    ansible_runner.run(private_data_dir={str(pdd)!r}, playbook='site.yml', ident='gave-up',\n"
            "                       quiet=True, cancel_callback=broken)\n"
            "except Exception as e:\n"
            "    raised = type(e).__name__\n"
            "gc.collect()\n"
            "deadline = time.monotonic() + 30\n"
            "while (p.stats()['abandoned'] < 1 or client_threads() != ['nats-reaper'])\\\n"
            "        and time.monotonic() < deadline:\n"
            "    time.sleep(0.01)\n"
            "print(json.dumps({'raised': raised, 'abandoned': p.stats()['abandoned'],\n"
            "                  'threads': client_threads()}))\n"
        )
        proc = run_python(code, server.url, timeout=300, RUNNER_NATS_ABANDONED_GRACE="0.2")
        # Its connection's threads are gone; the reaper stays for the next one.
        assert json.loads(proc.stdout) == {"raised": "CallbackError", "abandoned": 1,
                                           "threads": ["nats-reaper"]}
        published = re.search(r"run gave-up ended without a terminal status; closed with (\d+) "
                              r"messages published", proc.stderr)
        assert published, proc.stderr
        assert proc.stderr.count("gave-up") == 2, proc.stderr
        got = sub.wait_for(int(published.group(1)))
        events, statuses = by_kind(sub.settle(), "gave-up")
        assert len(events) + len(statuses) == len(got) == int(published.group(1))
        assert [json.loads(m.data)["status"] for m in statuses] == ["starting", "running"]
    finally:
        sub.close()


def test_an_event_is_published_as_it_was_when_the_handler_returned(server):
    # The Python plugin serializes later, in its asyncio thread, so there a change made to
    # the dict after the call is what gets published; ours serializes in the call.
    sub = Subscriber(server.url, "pub.ansible.runner.>")
    try:
        code = (
            "import types, ansible_runner_nats_rs as p\n"
            "c = types.SimpleNamespace(ident='snap', settings={})\n"
            "p.status_handler(c, {'status': 'starting', 'runner_ident': 'snap'})\n"
            "e = {'runner_ident': 'snap', 'event': 'runner_on_ok', 'stdout': 'as called', 'res': {'n': 1}}\n"
            "p.event_handler(c, e)\n"
            "e['stdout'] = 'changed after the call'\n"
            "e['res']['n'] = 2\n"
            "e['added'] = True\n"
            "p.status_handler(c, {'status': 'successful', 'runner_ident': 'snap'})\n"
        )
        run_python(code, server.url, timeout=60)
        events, statuses = by_kind(sub.wait_for(3), "snap")
        assert [json.loads(m.data)["status"] for m in statuses] == ["starting", "successful"]
        assert [json.loads(m.data) for m in events] == [
            {"runner_ident": "snap", "event": "runner_on_ok", "stdout": "as called", "res": {"n": 1}}
        ]
    finally:
        sub.close()


def test_runs_started_from_two_threads_while_settings_lets_the_gil_go_do_not_deadlock(server):
    # Reading a run's configuration runs Python code (here a settings property that
    # sleeps, as socket.gethostname() for nats_subject_id=hostname does): it must not
    # happen under a lock that the other thread, holding the GIL, waits for.
    sub = Subscriber(server.url, "pub.ansible.runner.>")
    try:
        code = (
            "import threading, time, ansible_runner_nats_rs as p\n"
            "class Config:\n"
            "    def __init__(self, ident): self.ident = ident\n"
            "    @property\n"
            "    def settings(self):\n"
            "        time.sleep(0.01)\n"
            "        return {}\n"
            "def runs(n):\n"
            "    for i in range(20):\n"
            "        ident = f'gil-{n}-{i}'\n"
            "        for s in ('starting', 'successful'):\n"
            "            p.status_handler(Config(ident), {'status': s, 'runner_ident': ident})\n"
            "threads = [threading.Thread(target=runs, args=(n,)) for n in range(2)]\n"
            "for t in threads: t.start()\n"
            "for t in threads: t.join()\n"
        )
        run_python(code, server.url, timeout=120)
        statuses = [json.loads(m.data)["status"] for m in sub.wait_for(80)]
        assert statuses.count("starting") == statuses.count("successful") == 40
    finally:
        sub.close()


def test_an_event_without_runner_ident_is_counted_and_leaves_other_runs_open(server):
    sub = Subscriber(server.url, "pub.ansible.runner.>")
    try:
        code = (
            "import types, ansible_runner_nats_rs as p\n"
            "c = types.SimpleNamespace(ident='kept', settings={})\n"
            "p.status_handler(c, {'status': 'starting', 'runner_ident': 'kept'})\n"
            "p.event_handler(c, {'event': 'orphan'})\n"
            "p.event_handler(c, {'event': 'orphan'})\n"
            "p.event_handler(c, {'event': 'runner_on_ok', 'runner_ident': 'kept'})\n"
            "p.status_handler(c, {'status': 'successful', 'runner_ident': 'kept'})\n"
            "print(p._native.stats()['no_ident'])\n"
        )
        proc = run_python(code, server.url, timeout=60)
        assert proc.stdout.strip() == "2"
        assert proc.stderr.count("without runner_ident") == 1, proc.stderr
        assert "ended without a terminal status" not in proc.stderr, proc.stderr
        events, statuses = by_kind(sub.wait_for(3), "kept")
        assert [json.loads(m.data)["status"] for m in statuses] == ["starting", "successful"]
        assert [json.loads(m.data)["event"] for m in events] == ["runner_on_ok"]
    finally:
        sub.close()


def test_worker_process_publishes_from_the_process_side_only(tmp_path, server):
    sub = Subscriber(server.url, "pub.ansible.runner.>")
    try:
        pdd = private_data_dir(tmp_path)
        out = tmp_path / "process-side"
        out.mkdir()
        plugin = plugin_env(server.url)
        plain = base_env()
        runner = str(VENV_BIN / "ansible-runner")
        transmit = subprocess.Popen(
            [runner, "transmit", str(pdd), "-p", "site.yml", "--ident", "wp-run"],
            env=plain, stdout=subprocess.PIPE,
        )
        worker = subprocess.Popen(
            [runner, "worker"], env=plain, stdin=transmit.stdout, stdout=subprocess.PIPE
        )
        transmit.stdout.close()
        process = subprocess.run(
            [runner, "process", str(out), "--ident", "wp-run"],
            env=plugin, stdin=worker.stdout, capture_output=True, text=True, timeout=300,
        )
        worker.stdout.close()
        assert worker.wait(60) == 0 and transmit.wait(60) == 0
        assert process.returncode == 0, process.stderr
        assert_every_event_once(out, "wp-run", sub)
    finally:
        sub.close()


def test_server_down_for_the_whole_run(tmp_path):
    pdd = private_data_dir(tmp_path, "with-plugin")
    baseline_pdd = private_data_dir(tmp_path, "without-plugin")
    baseline, baseline_took = run_cli(baseline_pdd, base_env(), "down-run")
    env = base_env(
        RUNNER_NATS_SUBJECT_ID="e2e",
        RUNNER_NATS_SERVERS=f"nats://127.0.0.1:{free_port()}",
        RUNNER_NATS_FLUSH_TIMEOUT="1",
    )
    proc, took = run_cli(pdd, env, "down-run")
    assert proc.returncode == baseline.returncode == 0
    status = (pdd / "artifacts" / "down-run" / "status").read_text()
    assert status == (baseline_pdd / "artifacts" / "down-run" / "status").read_text()
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, proc.stderr
    events = len(job_events(pdd, "down-run"))
    assert f"{events + 3} messages were not delivered" in errors[0], errors[0]
    # The flush timeout (1 s) and room for two runs of several seconds on a loaded machine:
    # a connect attempt waited out per event would take minutes.
    slack = max(3, baseline_took / 2)
    assert took < baseline_took + 1 + slack, f"{took:.1f}s with the plugin, {baseline_took:.1f}s without"


def test_a_user_who_may_not_publish_is_said_with_the_count(tmp_path):
    # The server takes every message and discards it with a permissions violation,
    # connection open: nothing arrives, and the run must say so.
    server = NatsServer(tmp_path, extra=(
        'authorization { users = [{user: "runner", password: "pw", '
        'permissions: {publish: {allow: ["elsewhere.>"]}}}] }'))
    try:
        pdd = private_data_dir(tmp_path)
        env = base_env(RUNNER_NATS_SUBJECT_ID="e2e", RUNNER_NATS_SERVERS=server.url,
                       RUNNER_NATS_USERNAME="runner", RUNNER_NATS_PASSWORD="pw")
        proc, _ = run_cli(pdd, env, "denied")
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    n = len(job_events(pdd, "denied")) + 3
    assert len(errors) == 1, proc.stderr
    assert f"run denied: the server discarded {n} of {n} messages: this user may not publish them" in errors[0]


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("RUNNER_NATS_HEADERS", "a=b,c", "RUNNER_NATS_HEADERS: item 2 (not shown) is not name=value"),
        ("RUNNER_NATS_SUBJECT_ID", "te st", "RUNNER_NATS_SUBJECT_ID: \"te st\": contains whitespace"),
        ("RUNNER_NATS_USER_CREDENTIALS", "/nonexistent/app.creds", "RUNNER_NATS_USER_CREDENTIALS: credentials: /nonexistent/app.creds: file not found"),
    ],
)
def test_bad_configuration_is_logged_and_the_playbook_succeeds(tmp_path, server, variable, value, expected):
    pdd = private_data_dir(tmp_path)
    vars_ = {"RUNNER_NATS_SUBJECT_ID": "e2e", "RUNNER_NATS_SERVERS": server.url, variable: value}
    proc, _ = run_cli(pdd, base_env(**vars_), "bad-config")
    assert proc.returncode == 0, proc.stderr
    assert (pdd / "artifacts" / "bad-config" / "status").read_text() == "successful"
    assert expected in proc.stderr, proc.stderr


@pytest.mark.parametrize("subject_id", [None, "te st"])
def test_messages_without_runner_ident_are_said_only_where_the_plugin_is_configured(subject_id):
    code = (
        "import types, ansible_runner_nats_rs as p\n"
        "c = types.SimpleNamespace(ident='x', settings={})\n"
        "p.event_handler(c, {'event': 'orphan'})\n"
        "p.status_handler(c, {'status': 'error', 'job_explanation': 'cut: {\"env\": 1}'})\n"
        "print(p._native.stats()['no_ident'])\n"
    )
    env = base_env() if subject_id is None else base_env(RUNNER_NATS_SUBJECT_ID=subject_id)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"
    said = [line for line in proc.stderr.splitlines() if line.startswith("ansible-runner.nats")]
    if subject_id is None:
        # Nothing turns the plugin on: it says nothing, as for every other message.
        assert said == [], proc.stderr
    else:
        assert [line.split(": ", 2)[2] for line in said] == [
            "event without runner_ident: not published, nor any later one without it "
            "(counted in stats()['no_ident'])",
            'status "error" without runner_ident (cut (the rest not shown)); not published; '
            "0 open runs of this stream closed",
        ], proc.stderr


def test_process_fed_a_truncated_stream_exits_as_fast_as_without_the_plugin(tmp_path, server):
    pdd = private_data_dir(tmp_path)
    runner = str(VENV_BIN / "ansible-runner")
    plain = base_env()
    transmit = subprocess.run(
        [runner, "transmit", str(pdd), "-p", "site.yml", "--ident", "cut"], env=plain,
        capture_output=True, timeout=120,
    )
    worker = subprocess.run(
        [runner, "worker"], env=plain, input=transmit.stdout, capture_output=True, timeout=300
    )
    stream = worker.stdout
    cut = stream[: len(stream) // 2]
    results = {}
    for name, env in [
        ("without", plain),
        ("with", base_env(RUNNER_NATS_SUBJECT_ID="e2e", RUNNER_NATS_SERVERS=server.url, RUNNER_NATS_FLUSH_TIMEOUT="2")),
    ]:
        out = tmp_path / f"process-{name}"
        out.mkdir()
        started = time.monotonic()
        proc = subprocess.run(
            [runner, "process", str(out), "--ident", "cut"], env=env, input=cut,
            capture_output=True, timeout=60,
        )
        results[name] = (proc.returncode, time.monotonic() - started, proc.stderr.decode())
    (rc_without, t_without, err_without), (rc_with, t_with, err_with) = (
        results["without"], results["with"])
    assert "ansible-runner.nats" not in err_without, err_without
    assert rc_with == rc_without, err_with
    slack = max(2, t_without / 2)
    assert t_with < t_without + 2 + slack, f"{t_with:.1f}s with the plugin, {t_without:.1f}s without"
    assert "without runner_ident" in err_with, err_with


@pytest.mark.wheel
def test_wheel_installs_into_a_fresh_virtualenv(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run(
        # For this interpreter: maturin on its own builds for the first Python on PATH.
        [str(VENV_BIN / "maturin"), "build", "--release", "--quiet", "--out", str(dist),
         "--interpreter", sys.executable],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900,
    )
    assert build.returncode == 0, build.stderr
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "-c", str(Path(__file__).resolve().parents[2] / "tools" / "constraints.txt"),
         str(wheels[0]), "ansible-runner==2.4.3"],
        capture_output=True, text=True, timeout=600,
    )
    assert pip.returncode == 0, pip.stderr
    shown = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import ansible_runner; print(ansible_runner.plugins)"],
        capture_output=True, text=True, timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "'nats': <module 'ansible_runner_nats_rs'" in shown.stdout, shown.stdout


def test_node_killed_and_restarted_mid_run_loses_nothing(tmp_path):
    from e2e_support import Proxy, routed_interest, two_node_cluster, wait_until

    a, b = two_node_cluster(tmp_path)
    proxy = Proxy(a.port)
    sub = Subscriber(b.url, "pub.ansible.runner.>")
    try:
        wait_until(15, "B's subscription known on A", lambda: routed_interest(a, "pub.ansible.runner.>"))
        pdd = private_data_dir(tmp_path)
        env = base_env(
            RUNNER_NATS_SUBJECT_ID="e2e",
            RUNNER_NATS_SERVERS=proxy.url,
            RUNNER_NATS_RECONNECT_TIME_WAIT="0.1",
        )
        run = subprocess.Popen(
            [str(VENV_BIN / "ansible-runner"), "run", str(pdd), "-p", "long.yml", "--ident", "kill-run"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        sub.wait_for(20, timeout=60)
        # A goes away mid-run; the proxy keeps the plugin off A until A is back and knows
        # B's subscription again, so no message can reach A before it can route it.
        proxy.refusing = True
        a.stop()
        proxy.cut_all()
        a.start()
        wait_until(30, "A's route with B's interest", lambda: routed_interest(a, "pub.ansible.runner.>"))
        proxy.refusing = False
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        expected = job_events(pdd, "kill-run")

        def missing(messages):
            uuids = {json.loads(m.data)["uuid"] for m in by_kind(messages, "kill-run")[0]}
            return [e["counter"] for e in expected if e["uuid"] not in uuids]

        # Everything, then a quiet second for late duplicates.
        sub.collect_until(lambda messages: not missing(messages))
        got = sub.settle(quiet=1.0)
        assert not missing(got), f"events lost: {missing(got)}"
        events, statuses = by_kind(got, "kill-run")
        uuids = [json.loads(m.data)["uuid"] for m in events]
        assert [json.loads(m.data)["status"] for m in statuses][-1] == "successful"
        duplicates = len(uuids) - len(set(uuids))
        print(f"node killed mid-run: {len(expected)} events, all arrived, {duplicates} duplicates")
    finally:
        sub.close()
        proxy.close()
        a.stop()
        b.stop()


def test_tls_and_a_creds_file_end_to_end(tmp_path):
    import ssl

    from e2e_support import Accounts, tls_files

    accounts = Accounts()
    certs = tls_files(tmp_path)
    tls = f'tls {{\n  cert_file: "{certs["cert"]}"\n  key_file: "{certs["key"]}"\n  ca_file: "{certs["ca"]}"\n}}\n'
    server = NatsServer(tmp_path, extra=accounts.server_config() + tls)
    # The subscriber is another user of the same account; nats-py signs through callbacks.
    sub_jwt, sub_key = accounts.user("subscriber")
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    sub = Subscriber(
        f"tls://127.0.0.1:{server.port}", "pub.ansible.runner.>", tls=context,
        user_jwt_cb=lambda: sub_jwt.encode(),
        signature_cb=lambda nonce: _b64(sub_key.sign(nonce.encode())),
    )
    try:
        creds = tmp_path / "plugin.creds"
        creds.write_text(accounts.creds("plugin"))
        pdd = private_data_dir(tmp_path)
        env = base_env(
            RUNNER_NATS_SUBJECT_ID="e2e",
            RUNNER_NATS_SERVERS=f"tls://127.0.0.1:{server.port}",
            RUNNER_NATS_TLS_CA_FILE=certs["ca"],
            RUNNER_NATS_USER_CREDENTIALS=creds,
            RUNNER_NATS_HEADERS=HEADERS,
        )
        proc, _ = run_cli(pdd, env, "tls-run")
        assert proc.returncode == 0, proc.stderr
        assert "ERROR" not in proc.stderr, proc.stderr
        assert_every_event_once(pdd, "tls-run", sub)
    finally:
        sub.close()
        server.stop()


def _b64(data):
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=")
