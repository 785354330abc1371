"""Drop-in parity with the plugin ours replaces, the Python `ansible-runner-nats` 0.4.0.

One real playbook run feeds both plugins the same calls: a tee, registered as
ansible-runner's only plugin, hands every status and event to the Python plugin and then to
ours, each with its own view of the run's configuration that differs only in
`nats_options.servers` (one nats-server each). An independent subscriber on each server
collects what arrived. Subjects, headers and parsed payloads must be the same, message for
message, except where the README's "Differences from the Python plugin" says otherwise (the
redacted `env` of the `starting` status, the `nats_headers` setting without the variable)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_support import ROOT, VENV_BIN, NatsServer, Subscriber, base_env

PEER = VENV_BIN.parent / "peer"
TESTS = Path(__file__).resolve().parent

# Runs in a Python of its own: argv[1] is a JSON object with `peer`, `tests`, `pdd`,
# `ident`, `servers` ({"peer": url, "ours": url}), `settings` and `long` (the playbook of the
# fixtures, with its 38 KB loop result, instead of its three-item version).
TEE = r'''
import json, sys
args = json.loads(sys.argv[1])
import ansible_runner
# Only now, after ansible-runner collected its entry points: the tee is its one plugin.
sys.path.append(args["peer"])
sys.path.insert(0, args["tests"])
import ansible_runner_nats as peer
import ansible_runner_nats_rs as ours
from playbook import PLAYBOOK, SHORT_PLAYBOOK, run_playbook

assert peer.__version__ == "0.4.0" and peer.__file__.startswith(args["peer"]), peer.__file__


class View:
    """The run's configuration as one plugin sees it: its own server in nats_options."""

    def __init__(self, config, server):
        self._config = config
        options = dict(config.settings.get("nats_options") or {}, servers=[server])
        self.settings = dict(config.settings, nats_options=options)

    def __getattr__(self, name):
        return getattr(self._config, name)


class Tee:
    def __init__(self):
        self.views = {}

    def _views(self, config):
        if id(config) not in self.views:
            self.views[id(config)] = (config, View(config, args["servers"]["peer"]),
                                      View(config, args["servers"]["ours"]))
        return self.views[id(config)][1:]

    def status_handler(self, config, data):
        theirs, mine = self._views(config)
        peer.status_handler(theirs, data)
        ours.status_handler(mine, data)

    def event_handler(self, config, data):
        theirs, mine = self._views(config)
        peer.event_handler(theirs, data)
        ours.event_handler(mine, data)


ansible_runner.plugins.clear()
ansible_runner.plugins["tee"] = Tee()
playbook = PLAYBOOK if args["long"] else SHORT_PLAYBOOK
r, events = run_playbook(args["pdd"], playbook, ident=args["ident"], settings=args["settings"])
print(json.dumps({"status": r.status, "events": len(events)}))
'''

STATUSES = ["starting", "running", "successful"]


AUTH = 'authorization {\n  users = [{user: "parity", password: "pw s3cret"}, {user: "from-settings", password: "pw"}]\n}\n'


def server_pair(tmp_path, extra=""):
    """A nats-server for each plugin, both with the same users (one for the variables, one
    for the settings) and `extra` configuration."""
    pair = {}
    try:
        for side in ("peer", "ours"):
            pair[side] = NatsServer(tmp_path / side, extra=AUTH + extra)
        yield pair
    finally:
        for server in pair.values():
            server.stop()


@pytest.fixture
def servers(tmp_path):
    yield from server_pair(tmp_path)


def run_both(tmp_path, servers, ident, settings, long=False, scheme="nats", subscribe_kw=None,
             other_env=None, **nats_vars):
    """Runs the playbook (`long`: the fixtures' one, 13 s) once through the tee; returns, for
    each plugin, what its subscriber received as (subject, headers, parsed payload), in order
    of arrival. `scheme` is the servers' URL scheme, `subscribe_kw` more nats-py connect
    arguments of the subscribers, `other_env` more variables of the run."""
    if not (PEER / "ansible_runner_nats" / "__init__.py").exists():
        raise AssertionError(f"the Python plugin is not in {PEER}: run `make peer` "
                             "(`make test` installs it)")
    creds = {"user": "parity", "password": "pw s3cret", **(subscribe_kw or {})}
    urls = {side: s.url.replace("nats://", f"{scheme}://") for side, s in servers.items()}
    subs = {side: Subscriber(url, "pub.ansible.runner.>", **creds) for side, url in urls.items()}
    try:
        args = {"peer": str(PEER), "tests": str(TESTS), "pdd": str(tmp_path / "pdd"),
                "ident": ident, "servers": urls, "settings": settings, "long": long}
        # The run's env (published in the `starting` status) is this environment, kept
        # small so that what each plugin does with it is plain.
        env = {k: v for k, v in base_env(**nats_vars).items()
               if k in ("PATH", "HOME", "LANG", "ANSIBLE_PYTHON_INTERPRETER") or k.startswith("RUNNER_NATS_")}
        env.update(other_env or {})
        proc = subprocess.run([sys.executable, "-c", TEE, json.dumps(args)], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outcome = json.loads(proc.stdout.splitlines()[-1])
        assert outcome["status"] == "successful", outcome
        expected = outcome["events"] + len(STATUSES)
        got = {}
        for side, sub in subs.items():
            # Ours must deliver everything; the Python plugin is only waited for as long.
            msgs = sub.collect_until(lambda m: len(m) >= expected, timeout=30)
            got[side] = [(m.subject, m.headers or {}, json.loads(m.data)) for m in msgs]
        assert len(got["ours"]) == expected, f"ours delivered {len(got['ours'])} of {expected}"
        return got, proc.stderr
    finally:
        for sub in subs.values():
            sub.close()


def key(message):
    subject, _, payload = message
    return subject, payload.get("uuid") or payload.get("status")


def assert_same(got, expect_ours=lambda theirs: theirs):
    """Ours delivered what the Python plugin delivered, message for message and in the same
    order, `expect_ours(theirs)` being the documented difference. Ours delivered everything
    (`run_both`); the Python plugin, which can lose messages, is compared on what it
    delivered, which must include its `starting` status and events."""
    ours = {key(m): m for m in got["ours"]}
    assert len(ours) == len(got["ours"]), "ours published a message twice"
    theirs_keys = [key(m) for m in got["peer"]]
    assert len(set(theirs_keys)) == len(theirs_keys), "the Python plugin published a message twice"
    for theirs in got["peer"]:
        mine = ours.get(key(theirs))
        assert mine is not None, f"ours did not publish {key(theirs)}"
        assert mine == expect_ours(theirs), key(theirs)
    delivered = set(theirs_keys)
    order = [key(m) for m in got["ours"] if key(m) in delivered]
    assert order == theirs_keys, "the same messages in another order"
    assert [p["status"] for s, _, p in got["ours"] if s.endswith(".status")] == STATUSES
    assert got["ours"][0][2].get("status") == "starting" and got["ours"][-1][2].get("status") == STATUSES[-1]
    assert got["peer"] and got["peer"][0][2].get("status") == "starting", "the Python plugin's first message"
    assert any(s.endswith(".event") for s, _, _ in got["peer"]), "no event from the Python plugin"


def redacted(names):
    """What ours publishes for the Python plugin's `theirs`: the `starting` status's env
    with the values of `names` replaced by ********."""

    def expect(theirs):
        subject, headers, payload = theirs
        if payload.get("status") != "starting":
            return theirs
        env = dict(payload["env"], **{n: "********" for n in names})
        return subject, headers, dict(payload, env=env)

    return expect


def test_variables_give_the_same_subjects_headers_and_payloads(tmp_path, servers):
    # Headers with spaces around names and values, a non-ASCII value and an empty one.
    header_list = "producer=ansible-runner, team = infra , note=caf\u00e9 \u2713, empty="
    got, stderr = run_both(
        tmp_path, servers, "parity-env", {}, long=True,
        RUNNER_NATS_SUBJECT_ID="parity", RUNNER_NATS_HEADERS=header_list, RUNNER_NATS_USERNAME="parity",
        RUNNER_NATS_PASSWORD="pw s3cret", RUNNER_NATS_CLIENT_NAME="parity",
    )
    assert_same(got, redacted({"RUNNER_NATS_PASSWORD"}))
    subject, headers, starting = got["peer"][0]
    assert subject == "pub.ansible.runner.parity.parity-env.status"
    assert headers == {"producer": "ansible-runner", "team": "infra", "note": "caf\u00e9 \u2713", "empty": ""}
    assert starting["env"]["RUNNER_NATS_PASSWORD"] == "pw s3cret", "the Python plugin publishes it"
    assert "ansible-runner.nats" not in stderr, stderr
    sizes = [len(json.dumps(p)) for _, _, p in got["ours"]]
    assert max(sizes) > 30000, "the 60-item loop result is among the events compared"


def test_settings_and_the_variable_merge_the_same(tmp_path, servers):
    settings = {"nats_subject_id": "from-settings", "nats_headers": {"a": "1", "team": "settings"},
                "nats_options": {"user": "from-settings", "password": "pw"}}
    got, stderr = run_both(tmp_path, servers, "parity-settings", settings, RUNNER_NATS_HEADERS="team=env")
    assert_same(got)
    subject, headers, _ = got["ours"][-1]
    assert subject == "pub.ansible.runner.from-settings.parity-settings.status"
    assert headers == {"a": "1", "team": "env"}, "the variable wins per header"
    assert "ansible-runner.nats" not in stderr, stderr


def test_hostname_subjects_and_no_headers_are_the_same(tmp_path, servers):
    import socket

    got, _ = run_both(tmp_path, servers, "parity-host", {}, RUNNER_NATS_SUBJECT_ID="hostname",
                      RUNNER_NATS_USERNAME="parity", RUNNER_NATS_PASSWORD="pw s3cret")
    assert_same(got, redacted({"RUNNER_NATS_PASSWORD"}))
    host = socket.gethostname().replace(".", "-")
    assert {s for s, _, _ in got["ours"]} == {f"pub.ansible.runner.{host}.parity-host.{k}" for k in ("event", "status")}
    assert all(h == {} for _, h, _ in got["peer"] + got["ours"])

    # Only the variable's `hostname` is the host name: in the settings it is taken as it is.
    settings = {"nats_subject_id": "hostname", "nats_options": {"user": "parity", "password": "pw s3cret"}}
    got, _ = run_both(tmp_path / "settings", servers, "parity-host-settings", settings)
    assert_same(got)
    assert {s for s, _, _ in got["ours"]} == {
        f"pub.ansible.runner.hostname.parity-host-settings.{k}" for k in ("event", "status")}


def test_the_headers_setting_alone_is_applied_by_ours_only(tmp_path, servers):
    # The documented difference: without RUNNER_NATS_HEADERS, the Python plugin ignores
    # the nats_headers setting.
    settings = {"nats_subject_id": "parity", "nats_headers": {"producer": "settings"},
                "nats_options": {"user": "parity", "password": "pw s3cret"}}
    got, _ = run_both(tmp_path, servers, "parity-headers", settings)
    assert_same(got, lambda theirs: (theirs[0], {"producer": "settings"}, theirs[2]))
    assert all(h == {} for _, h, _ in got["peer"])


def test_tls_trusts_the_systems_cas_and_verifies_tls_hostname_the_same(tmp_path):
    # nats-py verifies a tls:// server against the system's CAs (OpenSSL's default paths,
    # here SSL_CERT_FILE) and the name in the `tls_hostname` option: a configuration that
    # works with the Python plugin must work with ours, with no option of ours added.
    import ssl

    from e2e_support import tls_files

    certs = tls_files(tmp_path, dns_names=("nats.internal",), ips=())
    tls = f'tls {{\n  cert_file: "{certs["cert"]}"\n  key_file: "{certs["key"]}"\n}}\n'
    pair = server_pair(tmp_path, extra=tls)
    servers = next(pair)
    try:
        settings = {"nats_subject_id": "parity",
                    "nats_options": {"user": "parity", "password": "pw s3cret",
                                     "tls_hostname": "nats.internal"}}
        context = ssl.create_default_context(cafile=str(certs["ca"]))
        got, stderr = run_both(tmp_path, servers, "parity-tls", settings, scheme="tls",
                               subscribe_kw={"tls": context, "tls_hostname": "nats.internal"},
                               other_env={"SSL_CERT_FILE": str(certs["ca"])})
        assert_same(got)
        assert "ansible-runner.nats" not in stderr, stderr
    finally:
        pair.close()
