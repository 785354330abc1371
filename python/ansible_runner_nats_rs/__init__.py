"""ansible-runner plugin ``nats``: publishes Ansible Runner events and status changes to NATS.

ansible-runner imports this module through the ``ansible_runner.plugins`` entry point when
``ansible_runner`` itself is imported, and calls, for every run in the process:

* ``status_handler(runner_config, status_data)`` on each status change, and
* ``event_handler(runner_config, event_data)`` for each event.

Both serialize ``data`` natively and hand the JSON bytes to the native side. They never raise
(ansible-runner does not guard plugin calls: an exception would abort the run), except for
``KeyboardInterrupt`` and ``SystemExit``, which must still stop the run / the process. Errors
are logged to the ``ansible-runner.nats`` logger: the first one with its traceback at ERROR,
later ones at DEBUG.
"""

import logging

logger = logging.getLogger("ansible-runner.nats")

try:
    from . import _native
except Exception:  # pragma: no cover - a broken install must not break `import ansible_runner`
    _native = None
    logger.error("ansible-runner-nats: native module unavailable; plugin disabled", exc_info=True)

__all__ = ["status_handler", "event_handler", "dumps"]

_errors = 0


def _handle(kind, runner_config, data):
    global _errors
    try:
        if _native is None:
            return
        ident = getattr(runner_config, "ident", None)
        if ident is None and isinstance(data, dict):
            ident = data.get("runner_ident")
        settings = getattr(runner_config, "settings", None)
        _native.handle(
            kind,
            "" if ident is None else str(ident),
            settings if isinstance(settings, dict) else None,
            _native.dumps(data),
        )
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        _errors += 1
        try:
            if _errors == 1:
                logger.error("ansible-runner-nats: %s handler failed", kind, exc_info=True)
            else:
                logger.debug("ansible-runner-nats: %s handler failed (%d)", kind, _errors, exc_info=True)
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
