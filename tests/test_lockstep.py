"""Members of a lockstep ring take their steps strictly in turn, time only their own steps, and a
member left waiting by a dead neighbour raises instead of hanging."""

import threading
import time

import pytest

from distill.lockstep import Lockstep
from distill.staging import write_text_atomic

SLEEP = {0: 0.05, 1: 0.1, 2: 0.3}


def test_members_step_in_turn_and_time_their_own_steps(tmp_path):
    turn = tmp_path / "turn"
    write_text_atomic(turn, "0")
    order: list[int] = []

    def member(index: int, seconds: float) -> Lockstep:
        ring = Lockstep(turn, index, members=3, timeout=30)
        for _ in range(4):
            ring.on_step_begin(None, None, None)
            order.append(index)
            time.sleep(seconds)
            ring.on_step_end(None, None, None)
        return ring

    rings: dict[int, Lockstep] = {}
    threads = [
        threading.Thread(target=lambda i=i: rings.__setitem__(i, member(i, SLEEP[i]))) for i in (2, 0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2] * 4
    for index, ring in rings.items():  # its own sleep, never its neighbours' too (at least 0.35 s more)
        assert len(ring.step_seconds) == 4
        assert SLEEP[index] <= min(ring.step_seconds) and max(ring.step_seconds) < SLEEP[index] + 0.2


def test_a_member_whose_turn_never_comes_raises(tmp_path):
    turn = tmp_path / "turn"
    write_text_atomic(turn, "0")  # member 0 never hands over
    ring = Lockstep(turn, index=1, members=2, timeout=0.05)
    with pytest.raises(TimeoutError, match="member 1 waited"):
        ring.on_step_begin(None, None, None)
