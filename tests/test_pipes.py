"""Reading tenants' pipes (gateway/pipes.py) on the gateway's own loop, uvloop."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import uvloop

from gateway.pipes import MAX_LINE, LineReader


def run(coroutine_function):  # type: ignore[no-untyped-def]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine_function())


def test_a_descriptor_is_closed_once_so_another_threads_new_one_is_left_alone() -> None:
    """A thread opening pipes all the time, as the gateway's do (spares, uploads), while pipes
    are read to their end: none of its descriptors may be closed under it. With uvloop's own
    pipe transport (loop.connect_read_pipe) a few in a thousand were."""
    stop = threading.Event()
    closed_under_it: list[int] = []

    def bystander() -> None:
        while not stop.is_set():
            descriptors = os.pipe()
            time.sleep(0.0001)
            for fd in descriptors:
                try:
                    os.fstat(fd)
                    os.close(fd)
                except OSError:
                    closed_under_it.append(fd)

    async def scenario() -> None:
        for _ in range(1000):
            read, write = os.pipe()
            os.write(write, b"one line\n")
            os.close(write)
            await LineReader(read, lambda line: None).ended

    thread = threading.Thread(target=bystander)
    thread.start()
    try:
        run(scenario)
    finally:
        stop.set()
        thread.join()
    assert closed_under_it == []


def test_lines_are_whole_however_the_bytes_arrive() -> None:
    async def scenario() -> list[bytes]:
        read, write = os.pipe()
        lines: list[bytes] = []
        reader = LineReader(read, lines.append)
        for piece in (b"first li", b"ne\nsecond line\nthi", b"rd, with no newline"):
            os.write(write, piece)
            await asyncio.sleep(0.01)
        os.close(write)
        await reader.ended
        return lines

    assert run(scenario) == [b"first line\n", b"second line\n", b"third, with no newline"]


def test_a_line_longer_than_the_limit_comes_in_pieces_and_nothing_is_lost() -> None:
    async def scenario() -> list[bytes]:
        read, write = os.pipe()
        lines: list[bytes] = []
        reader = LineReader(read, lines.append)
        data = b"x" * (MAX_LINE * 2 + 10) + b"\nafter\n"
        while data:
            sent = os.write(write, data[:4096])
            data = data[sent:]
            await asyncio.sleep(0)
        os.close(write)
        await reader.ended
        return lines

    lines = run(scenario)
    assert b"".join(lines) == b"x" * (MAX_LINE * 2 + 10) + b"\nafter\n"
    assert max(len(line) for line in lines) <= MAX_LINE + 1
    assert lines[-1] == b"after\n"


def test_close_stops_reading_and_closes_the_descriptor_once() -> None:
    async def scenario() -> None:
        read, write = os.pipe()
        reader = LineReader(read, lambda line: None)
        reader.close()
        reader.close()
        assert reader.ended.done()
        try:
            os.fstat(read)
        except OSError:
            pass
        else:
            raise AssertionError("the reader left its descriptor open")
        os.close(write)

    run(scenario)
