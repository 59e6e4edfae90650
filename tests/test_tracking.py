"""The background writer: flush returns only when every write submitted before it is done."""

from __future__ import annotations

import threading
import time

from search.tracking import Sender


def test_flush_waits_for_writes_submitted_while_the_queue_drains() -> None:
    sender = Sender("test")
    done: list[int] = []
    gate = threading.Event()

    def slow(i: int) -> None:
        gate.wait(5)
        time.sleep(0.05)
        done.append(i)

    sender.submit("first", lambda: slow(0))
    gate.set()
    for i in range(1, 20):  # submitted while the thread may be between writes, when the queue is empty
        sender.submit(f"w{i}", lambda i=i: slow(i))
        time.sleep(0.01)
        assert sender.flush(timeout=10)
        assert done == list(range(i + 1)), (i, done)


def test_a_write_that_keeps_failing_is_given_up_and_flush_returns() -> None:
    sender = Sender("test", give_up_after=0.3)

    def broken() -> None:
        raise ConnectionError("server away")

    sender.submit("broken", broken)
    assert sender.flush(timeout=10)
    assert sender.lost == ["broken: ConnectionError"]
