"""A real SMTP server for the tests (aiosmtpd, in a thread of the test process)."""

from __future__ import annotations

import contextlib
import email
import re
import socket
import threading
from collections.abc import Iterator
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller


class Mailbox:
    """aiosmtpd's handler: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m["To"] == address]


def _free_port() -> int:
    # aiosmtpd's Controller checks that it is up by connecting to its port: it needs a number.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def smtp_server() -> Iterator[Mailbox]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=_free_port())
    controller.start()
    box.port = controller.port
    try:
        yield box
    finally:
        controller.stop()


def link_in(message: Message) -> str:
    """The first http(s) link in a plain-text email."""
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    found = re.search(r"https?://\S+", body.decode())
    assert found, body
    return found.group(0)
