"""ansible-runner plugin ``nats``: publishes Ansible Runner events and status changes to NATS.

A drop-in replacement for the ``ansible-runner-nats`` Python plugin: the same
``RUNNER_NATS_*`` variables, the same runner settings (``nats_subject_id``, ``nats_options``,
``nats_headers``), the same subjects (``pub.ansible.runner.{subject_id}.{runner_ident}.event``
and ``.status``), payloads that parse to the same JSON.

ansible-runner imports this module through the ``ansible_runner.plugins`` entry point when
``ansible_runner`` itself is imported, and calls, for every run in the process:

* ``status_handler(runner_config, status_data)`` on each status change, and
* ``event_handler(runner_config, event_data)`` for each event.

Both hand ``data`` to the native side, which serializes it and queues it for the run's own
connection; the call returns without waiting on the network, except at the run's terminal
status, whose flush is bounded by the flush timeout (and once, for up to 2 s, when a
connected server stops reading and the 1 MiB queue is full). They never raise (an exception would
abort the run), except ``KeyboardInterrupt`` and ``SystemExit``, which must still stop it.

Problems go to the logger ``ansible-runner.nats`` at ERROR, one line each; per-run summaries
at INFO. The ``ansible-runner`` command silences the root logger, so when no handler up the
logger hierarchy would show a record, this module writes it to stderr itself.
"""

import atexit
import logging
import os
import sys

logger = logging.getLogger("ansible-runner.nats")


class _FallbackStderrHandler(logging.StreamHandler):
    """Writes to stderr only when no other handler up the hierarchy would show the record.

    Under the ``ansible-runner`` CLI the root logger has only a NullHandler, so this one
    speaks; in an application that configured logging, its handlers do, without duplicates.
    The stream is ``sys.stderr`` as it is when a record comes (a redirection applies).
    """

    def __init__(self):
        logging.Handler.__init__(self)
        self._stream = None

    @property
    def stream(self):
        """``sys.stderr`` as it is now, unless ``setStream`` chose another."""
        return self._stream if self._stream is not None else sys.stderr

    @stream.setter
    def stream(self, value):
        self._stream = value

    def emit(self, record):
        if self.stream is None:
            return
        current = logger
        while current is not None:
            for handler in current.handlers:
                # By name: a reloaded module's fallback is another class of the same name.
                if type(handler).__name__ == "_FallbackStderrHandler" or isinstance(
                    handler, logging.NullHandler
                ):
                    continue
                # A handler with filters may drop the record: not relied on (its filters
                # are not asked either, as one that counts or dedupes would then drop the
                # real record). A duplicate on stderr is better than a lost error.
                if record.levelno >= handler.level and not handler.filters:
                    return
            if not current.propagate:
                break
            current = current.parent
        super().emit(record)


def _install_logging():
    if not any(type(h).__name__ == "_FallbackStderrHandler" for h in logger.handlers):
        handler = _FallbackStderrHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        logger.addHandler(handler)


def _ensure_level():
    """The ``ansible-runner`` CLI sets the root logger to level 99, which would drop our
    errors before any handler sees them. In that case only (no level on our logger or on
    any logger between it and the root, the root above WARNING) ours is set to WARNING. A
    host that set a level anywhere on the way (``ansible-runner`` muted, ``basicConfig``
    at INFO for the run summaries) keeps it. Checked when there is something to log:
    the CLI configures logging after plugins are imported. A root above WARNING with a
    handler of its own is a host's choice, and kept."""
    if logger.level != logging.NOTSET:
        return
    current = logger.parent
    while current is not None and current.parent is not None:
        if current.level != logging.NOTSET:
            return
        current = current.parent
    root = logging.getLogger()
    if root.level > logging.WARNING and all(
        isinstance(h, logging.NullHandler) for h in root.handlers
    ):
        logger.setLevel(logging.WARNING)


_install_logging()

try:
    from . import _native
except Exception:  # pragma: no cover - a broken install must not break `import ansible_runner`
    _native = None
    try:
        _ensure_level()
        logger.error("native module unavailable; plugin disabled", exc_info=True)
    except Exception:
        pass

__all__ = ["status_handler", "event_handler", "dumps", "stats"]

# Failures of the handlers themselves (a bug of ours), by exception type: the first of
# each type is logged with its traceback, the rest only counted.
_failures = {}


def _log(level, line):
    """One line; a host's logging handler that raises costs that line, not the others."""
    try:
        logger.log(level, "%s", line)
    except Exception:
        pass


def _handle(kind, runner_config, data):
    try:
        if _native is None:
            return
        lines = _native.handle(kind, runner_config, data)
        # Tested here: most calls have nothing to say, and pay no call for it.
        if lines:
            _log_lines(lines)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        name = type(e).__name__
        _failures[name] = _failures.get(name, 0) + 1
        if _failures[name] == 1:
            try:
                _ensure_level()
                logger.error("%s handler failed (%s)", kind, name, exc_info=True)
            except Exception:  # pragma: no cover - a broken logging setup
                pass


def status_handler(runner_config, data):
    """ansible-runner plugin hook: a status change (``{'status': ..., 'runner_ident': ...}``)."""
    _handle("status", runner_config, data)


def event_handler(runner_config, data):
    """ansible-runner plugin hook: one job event (the dict written to job_events/*.json)."""
    _handle("event", runner_config, data)


def dumps(obj):
    """JSON bytes of ``obj``, parsing equal to ``json.dumps(obj)`` (see ``_native.dumps``)."""
    return _native.dumps(obj)


def stats():
    """Process-wide counters: ``dumps_fast``, ``dumps_fallback``, ``dumps_failed`` (the
    serializer's stages), ``handled_event``, ``handled_status``, ``handled_other``,
    ``handled_bytes``, ``late`` (messages after their run's end), ``no_ident`` (events
    without a runner_ident), ``abandoned`` (runs closed because their ``runner_config``
    was garbage-collected before their terminal status) and ``handler_failures`` (our own
    failures, all types)."""
    counters = _native.stats() if _native is not None else {}
    counters["handler_failures"] = sum(_failures.values())
    return counters


def _log_lines(lines):
    if lines:
        _ensure_level()
        for level, line in lines:
            _log(level, line)


def _at_exit():
    """A run that never got its terminal status (an exception in ansible-runner, an
    interrupt) still has its queued messages flushed, bounded by the flush timeout, and
    its lines logged. Registered after ``logging`` was imported, so it runs before
    ``logging.shutdown``."""
    if _native is None or os.getpid() != _PID:
        # Forked without Python's at-fork hooks (see _forked): the runs are the parent's
        # copies, without their threads, and not this process's to close.
        return
    try:
        _log_lines(_native.close_all())
    except Exception:
        pass


def _forked():
    """In a forked child: the parent's runs, their configuration objects and the thread
    that closes abandoned runs are not the child's. The child publishes through an emitter
    of its own (its runs, its connections), and closes its own runs at exit."""
    global _PID
    _PID = os.getpid()
    if _native is not None:
        _native.forked()


_PID = os.getpid()
atexit.register(_at_exit)
os.register_at_fork(after_in_child=_forked)


# The Python plugin this one replaces registers the same entry point name.
_NAMESAKE = "ansible-runner-nats"


def _namesake_line():
    """What to say when the Python ``ansible-runner-nats`` is installed too, or ``None``.

    ansible-runner keys its plugins by entry point name, and both register ``nats``: it
    calls only the one its listing of entry points gives last, which the order of
    ``sys.path`` and of the directories' listings decides. If that is the other one, this
    plugin is imported and never called. The listing is ansible-runner's own: before
    Python 3.10 it uses the ``importlib_metadata`` backport, which lists a distribution
    found twice once."""
    metadata = None
    if sys.version_info < (3, 10):
        try:
            import importlib_metadata as metadata
        except ImportError:
            pass
    if metadata is None:
        from importlib import metadata

    try:
        other = metadata.distribution(_NAMESAKE)
    except metadata.PackageNotFoundError:
        return None
    found = metadata.entry_points()
    if hasattr(found, "select"):
        found = found.select(group="ansible_runner.plugins")
    else:  # the standard library of Python 3.9: a dict of groups
        found = found.get("ansible_runner.plugins", [])
    modules = [ep.value.split(":")[0].strip() for ep in found if ep.name == "nats"]
    if len(modules) < 2:
        return None
    called = modules[-1] == __name__
    which = (
        "this plugin, but only by the accident of the order of sys.path"
        if called
        else "it, and never this plugin"
    )
    return (
        logging.WARNING if called else logging.ERROR,
        f"{_NAMESAKE} {other.version} is installed too, under the same plugin name `nats`: "
        f"ansible-runner calls {which}; uninstall it (pip uninstall {_NAMESAKE})",
    )


try:
    _namesake = _namesake_line()
    if _namesake is not None:
        _log_lines([_namesake])
except Exception:  # pragma: no cover - a broken metadata set must not break the import
    pass
