"""The part buffers the S3 repository reads into (``storage.buffers.BufferPool``):
reused while lent out and given back, never more than its count, none kept idle."""

from __future__ import annotations

import threading

from mlserve.storage.buffers import BufferPool


def test_a_buffer_given_back_is_the_next_one_taken() -> None:
    pool = BufferPool(1024, 2)
    first = pool.take()
    assert len(first) == 1024
    pool.give(first)
    assert pool.take() is first


def test_take_waits_while_every_buffer_is_lent() -> None:
    pool = BufferPool(16, 2)
    held = [pool.take(), pool.take()]
    taken: list[bytearray] = []
    waiter = threading.Thread(target=lambda: taken.append(pool.take()), daemon=True)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # the third waits
    assert not taken
    pool.give(held[0])
    waiter.join(5)
    assert len(taken) == 1
    assert taken[0] is held[0]


def test_a_lost_buffer_frees_its_place() -> None:
    pool = BufferPool(16, 1)
    pool.take()
    pool.give(None)
    assert len(pool.take()) == 16


def test_idle_buffers_are_dropped() -> None:
    pool = BufferPool(16, 3)
    buffers = [pool.take() for _ in range(3)]
    for buffer in buffers:
        pool.give(buffer)
    assert pool.idle == 3
    pool.drop_idle()
    assert pool.idle == 0
    assert all(pool.take() is not buffer for buffer in buffers)
