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

import logging
import sys

logger = logging.getLogger("ansible-runner.nats")


class _FallbackStderrHandler(logging.StreamHandler):
    """Writes to stderr only when no other handler up the hierarchy would show the record.

    Under the ``ansible-runner`` CLI the root logger has only a NullHandler, so this one
    speaks; in an application that configured logging, its handlers do, without duplicates.
    """

    def __init__(self):
        super().__init__(sys.stderr)

    def emit(self, record):
        current = logger
        while current is not None:
            for handler in current.handlers:
                if handler is self or isinstance(handler, logging.NullHandler):
                    continue
                if record.levelno >= handler.level:
                    return
            if not current.propagate:
                break
            current = current.parent
        super().emit(record)


def _install_logging():
    if not any(isinstance(h, _FallbackStderrHandler) for h in logger.handlers):
        handler = _FallbackStderrHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        # The CLI sets the root level to 99; our errors must still get through.
        logger.setLevel(logging.WARNING)


_install_logging()

try:
    from . import _native
except Exception:  # pragma: no cover - a broken install must not break `import ansible_runner`
    _native = None
    logger.error("native module unavailable; plugin disabled", exc_info=True)

__all__ = ["status_handler", "event_handler", "dumps"]

_errors = 0


def _handle(kind, runner_config, data):
    global _errors
    try:
        if _native is None:
            return
        for level, line in _native.handle(kind, runner_config, data):
            logger.log(level, "%s", line)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        _errors += 1
        try:
            if _errors == 1:
                logger.error("%s handler failed", kind, exc_info=True)
            else:
                logger.debug("%s handler failed (%d)", kind, _errors, exc_info=True)
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
