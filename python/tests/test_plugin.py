import logging
import os
import subprocess
import sys
import types

import pytest

import ansible_runner_nats_rs as plugin
from ansible_runner_nats_rs import _native


def counts():
    s = _native.stats()
    return s["handled_event"], s["handled_status"]


def cfg(**kw):
    return types.SimpleNamespace(**kw)


GARBAGE = [
    (None, None),
    (object(), None),
    (cfg(), {"no": "runner_ident"}),
    (cfg(ident=None, settings="not a dict"), "not a dict"),
    (cfg(ident=123, settings={"nats_url": "nats://127.0.0.1:4222"}), [1, 2, 3]),
    (cfg(ident="x"), {"bad": {(1, 2): "tuple key"}}),
    (cfg(ident="x"), {"set": {1, 2}}),
    (cfg(ident="\ud800"), {"runner_ident": "\ud800"}),
]


@pytest.mark.parametrize("config,data", GARBAGE)
def test_handlers_never_raise(config, data):
    ev, st = counts()
    assert plugin.event_handler(config, data) is None
    assert plugin.status_handler(config, data) is None
    assert counts() >= (ev, st)


def test_handler_errors_are_logged_not_raised(caplog, monkeypatch):
    def boom(*a):
        raise RuntimeError("emitter exploded")

    monkeypatch.setattr(_native, "handle", boom)
    with caplog.at_level(logging.DEBUG, logger="ansible-runner.nats"):
        plugin.event_handler(cfg(ident="r"), {"event": "x"})
        plugin.status_handler(cfg(ident="r"), {"status": "running"})
    assert any("emitter exploded" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    assert all(r.name == "ansible-runner.nats" for r in caplog.records)


def test_keyboard_interrupt_and_system_exit_propagate(monkeypatch):
    for exc in (KeyboardInterrupt, SystemExit):
        def raiser(*a, exc=exc):
            raise exc

        monkeypatch.setattr(_native, "handle", raiser)
        with pytest.raises(exc):
            plugin.event_handler(cfg(ident="r"), {})


def test_an_interrupt_raised_by_the_callers_objects_propagates(monkeypatch):
    # From runner_config.settings, or from str() of a runner_ident that is not a str: a
    # Ctrl-C (or sys.exit) landing there must stop the run, not vanish in the plugin.
    monkeypatch.setenv("RUNNER_NATS_SUBJECT_ID", "interrupts")
    monkeypatch.setenv("RUNNER_NATS_SERVERS", "nats://127.0.0.1:1")
    monkeypatch.setenv("RUNNER_NATS_FLUSH_TIMEOUT", "0.1")

    class Settings:
        def __init__(self, exc):
            self.exc = exc

        @property
        def settings(self):
            raise self.exc

    class Ident:
        def __init__(self, exc):
            self.exc = exc

        def __str__(self):
            raise self.exc

    for exc in (KeyboardInterrupt, SystemExit):
        with pytest.raises(exc):
            plugin.status_handler(Settings(exc), {"status": "starting", "runner_ident": f"int-{exc.__name__}"})
        with pytest.raises(exc):
            plugin.event_handler(cfg(settings={}), {"event": "x", "runner_ident": Ident(exc)})
    # An ordinary exception there is bad input, not an interrupt: handled, never raised.
    plugin.status_handler(Settings(RuntimeError("no settings")), {"status": "starting", "runner_ident": "int-ok"})
    plugin.event_handler(cfg(settings={}), {"event": "x", "runner_ident": Ident(RuntimeError("no str"))})
    for ident in ("int-ok", "int-KeyboardInterrupt", "int-SystemExit"):
        plugin.status_handler(cfg(settings={}), {"status": "failed", "runner_ident": ident})


def test_handlers_count():
    ev, st = counts()
    plugin.event_handler(cfg(ident="r", settings={}), {"event": "verbose", "stdout": "hi"})
    plugin.status_handler(cfg(ident="r", settings=None), {"status": "running", "runner_ident": "r"})
    assert counts() == (ev + 1, st + 1)


def test_entry_point_registered():
    code = "import ansible_runner; print(sorted(ansible_runner.plugins)); print(ansible_runner.plugins['nats'].__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'nats'" in out.splitlines()[0]
    assert out.splitlines()[1] == "ansible_runner_nats_rs"


def test_the_python_plugin_installed_too_is_said_with_which_one_is_called():
    # Both register the entry point `nats`; ansible-runner keeps the last one listed, and
    # the order of sys.path decides which that is. The Python plugin lives in .venv/peer.
    import sysconfig

    from e2e_support import VENV_BIN

    peer = VENV_BIN.parent / "peer"
    if not (peer / "ansible_runner_nats" / "__init__.py").exists():
        raise AssertionError(f"the Python plugin is not in {peer}: run `make peer` (`make test` installs it)")
    ours_dir = sysconfig.get_paths()["purelib"]
    code = "import ansible_runner; print(ansible_runner.plugins['nats'].__name__)"
    said = "ansible-runner-nats 0.4.0 is installed too, under the same plugin name `nats`: ansible-runner calls "
    for path, called, line in [
        ([peer], "ansible_runner_nats_rs",
         "WARNING: " + said + "this plugin, but only by the accident of the order of sys.path"),
        ([ours_dir, peer], "ansible_runner_nats", "ERROR: " + said + "it, and never this plugin"),
    ]:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, path)))
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert proc.stdout.strip() == called
        assert proc.stderr == f"ansible-runner.nats: {line}; uninstall it (pip uninstall ansible-runner-nats)\n"
    alone = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert alone.stderr == ""


def test_real_playbook_run_calls_plugin(tmp_path):
    import ansible_runner
    from playbook import run_playbook

    assert ansible_runner.plugins["nats"] is plugin
    ev, st = counts()
    before = _native.stats()
    r, events = run_playbook(str(tmp_path))
    assert r.status == "successful", r.stdout.read()
    after = _native.stats()
    assert len(events) > 60
    # every event went through the plugin, and the fast path
    assert after["handled_event"] - ev == len(events)
    assert after["handled_status"] - st == 3  # starting, running, successful
    assert after["dumps_fallback"] == before["dumps_fallback"]
    assert after["dumps_failed"] == before["dumps_failed"]
    import json

    for path, event in events:
        assert json.loads(_native.dumps(event)) == json.loads(json.dumps(event)), os.path.basename(path)
