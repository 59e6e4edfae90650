"""The background writer: flush returns only when every write submitted before it is done."""

from __future__ import annotations

import random
import threading
import time
import uuid

from mlflow.utils.uri import validate_path_is_safe

from search.tracking import Sender
from search.trial_runs import image_stem


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


def test_close_ends_the_thread_after_the_writes_before_it() -> None:
    sender, done = Sender("test"), []
    sender.submit("w", lambda: done.append(1))
    sender.close()
    sender._thread.join(timeout=10)
    assert not sender._thread.is_alive() and done == [1]


def test_abandon_counts_every_write_not_landed_once_and_flush_returns() -> None:
    sender, gate = Sender("test", give_up_after=0.5), threading.Event()

    def stuck() -> None:  # a server that does not answer: retried until patience runs out
        gate.wait(5)
        raise ConnectionError("server away")

    for i in range(3):
        sender.submit(f"w{i}", stuck)
    assert not sender.flush(timeout=0.2)
    assert sender.abandon() == 3  # two still queued, one being written
    assert sender.flush(timeout=0.1)
    gate.set()
    sender.close()
    sender._thread.join(10)
    assert not sender._thread.is_alive()  # the one in progress has failed for good by now
    assert len(sender.lost) == 3, sender.lost  # and was not counted again


def test_image_names_pass_the_servers_path_check_unchanged_and_parse_as_the_ui_parses_them() -> None:
    """Every step and id: the server neither refuses the name nor stores it under another (a `#`, a `/`)."""
    rng = random.Random(0)
    ids = [
        "2328cca1b81749118",
        "2fab",
        "2e2e",
        "25",
        "00",
        *(uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(300)),
    ]
    for step in range(0, 1001):
        for unique in (ids[step % len(ids)], "2328cca1"):
            for ext in (".png", "%compressed.webp"):
                name = f"images/{image_stem('samples', step, 1795609600188, unique)}{ext}"
                assert validate_path_is_safe(name) == name, (step, unique)
                stem = name.removeprefix("images/").removesuffix(".png").removesuffix("%compressed.webp")
                key, step_word, value, time_word, stamp, _ = stem.split("%")  # the UI splits on the separator
                assert (key, step_word, int(value), time_word, int(stamp)) == (
                    "samples",
                    "step",
                    step,
                    "timestamp",
                    1795609600188,
                )
