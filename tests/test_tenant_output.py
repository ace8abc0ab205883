"""A tenant's output as log events: chatter at debug, a traceback as one event (pure)."""

from __future__ import annotations

import logging

import pytest

from gateway.tenant_output import OutputEvents, line_level

CHAINED = """\
Traceback (most recent call last):
  File "/plugins/p.py", line 3, in <module>
    import nothing
ModuleNotFoundError: No module named 'nothing'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/plugins/p.py", line 5, in <module>
    raise RuntimeError("no luck")
RuntimeError: no luck""".splitlines()


@pytest.mark.parametrize(("line", "level"), [
    ("INFO:     Started server process [7]", logging.DEBUG),
    ("INFO:     Uvicorn running on unix socket /run/ds.sock (Press CTRL+C to quit)", logging.DEBUG),
    ("some plugin says hello", logging.DEBUG),
    ("WARNING:  Invalid HTTP request received.", logging.WARNING),
    ("/venv/lib/x.py:3: DeprecationWarning: pkg_resources is deprecated", logging.WARNING),
    ("ERROR:    Exception in ASGI application", logging.ERROR),
    ("Error: Invalid value for '--metadata': 'm.json' is not valid JSON", logging.ERROR),
    ("tenant_start_failed: cannot open a database: file is not a database", logging.ERROR),
])
def test_line_levels(line: str, level: int) -> None:
    assert line_level(line) == level


def test_a_chained_traceback_is_one_event_and_the_next_line_its_own() -> None:
    events = OutputEvents()
    assert events.feed("INFO:     Started server process [7]") == [
        (logging.DEBUG, "INFO:     Started server process [7]", "")
    ]
    assert [e for line in CHAINED for e in events.feed(line)] == []
    assert events.holding
    assert events.feed("INFO:     Shutting down") == [
        (logging.ERROR, "RuntimeError: no luck", "\n".join(CHAINED)),
        (logging.DEBUG, "INFO:     Shutting down", ""),
    ]
    assert not events.holding


def test_a_traceback_at_the_end_is_handed_over_by_flush() -> None:
    events = OutputEvents()
    for line in CHAINED[:4]:
        assert events.feed(line) == []
    assert events.feed("") == []
    assert events.flush() == [(logging.ERROR, CHAINED[3], "\n".join(CHAINED[:4]))]
    assert events.flush() == []
