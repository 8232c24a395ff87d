"""distill/bench_workers.py: workers driven a command at a time take their rounds in turn, a worker that
dies is reported once with its standard error and left out, and what a library prints cannot break the
protocol."""

import sys
import textwrap

import pytest

from distill.bench_workers import Worker, WorkerFailed, interleaved, paired_ratios, ratio_text, take_turns

ECHO = textwrap.dedent(
    """
    import os, sys, time
    from distill.bench_workers import commands, protocol_channel, reply

    channel = protocol_channel()
    print("a library printing to standard output")
    os.write(1, b"a C runtime writing to file descriptor 1\\n")
    name, fail_at = sys.argv[1], int(sys.argv[2])
    reply(channel, {"ready": name})
    for index, command in enumerate(commands()):
        if index == fail_at:
            sys.exit(f"{name} gave up at command {index}")
        reply(channel, {"name": name, "command": command, "index": index, "clock": time.monotonic()})
    """
)


def command(name, fail_at=-1):
    return [sys.executable, "-c", ECHO, name, str(fail_at)]


def echo(name, fail_at=-1):
    worker = Worker(command(name, fail_at), name)
    assert worker.read() == {"ready": name}
    return worker


def test_workers_take_their_rounds_in_turn_the_first_rotating():
    workers = [echo("a"), echo("b"), echo("c")]
    try:
        replies = list(interleaved(workers, rounds=3, command="round"))
    finally:
        for worker in workers:
            worker.close()
    order = [(index, reply["name"]) for index, _, reply in replies]
    assert order == [
        (0, "a"), (0, "b"), (0, "c"),
        (1, "b"), (1, "c"), (1, "a"),
        (2, "c"), (2, "a"), (2, "b"),
    ]  # fmt: skip
    clocks = [reply["clock"] for _, _, reply in replies]
    assert clocks == sorted(clocks)  # one at a time: each reply before the next command
    assert all(reply["command"] == "round" for _, _, reply in replies)


def test_a_worker_that_dies_is_reported_once_with_its_error_and_left_out():
    workers = [echo("a"), echo("b", fail_at=1), echo("c")]
    try:
        replies = list(interleaved(workers, rounds=3, command="round"))
    finally:
        for worker in workers:
            worker.close()
    failures = [(index, reply) for index, _, reply in replies if isinstance(reply, WorkerFailed)]
    assert len(failures) == 1 and failures[0][0] == 1
    message = str(failures[0][1])
    assert message.startswith("benchmark of b failed (exit code 1)") and "b gave up at command 1" in message
    assert "a library printing" in message  # what it printed went to standard error
    answered = [reply["name"] for _, _, reply in replies if not isinstance(reply, WorkerFailed)]
    assert answered.count("a") == 3 and answered.count("c") == 3 and answered.count("b") == 1


def test_a_worker_that_dies_before_it_is_ready_names_the_cause():
    with pytest.raises(WorkerFailed, match="no such model"):
        Worker([sys.executable, "-c", "import sys; sys.exit('no such model')"], "broken").read()


def test_paired_ratios_take_the_median_and_middle_half_over_rounds_both_took():
    assert paired_ratios([2.0, 4.0, None, 8.0, 3.0], [1.0, 1.0, 1.0, 2.0, 1.0]) == (3.5, 2.75, 4.0)
    assert paired_ratios([5.0], [2.0]) == (2.5, 2.5, 2.5)
    assert paired_ratios([None], [1.0]) is None


def test_take_turns_gives_each_worker_its_rounds_and_finish_and_a_failure_costs_its_worker_only():
    starters = [
        lambda: Worker.started(command("a"), "a"),
        lambda: Worker.started(command("b", fail_at=1), "b"),
        lambda: Worker.started([sys.executable, "-c", "import sys; sys.exit('no model here')"], "c"),
        lambda: Worker.started(command("d"), "d"),
    ]
    in_turn = take_turns(starters, rounds=2, sequential=False)
    assert isinstance(in_turn[1], WorkerFailed) and "b gave up at command 1" in str(in_turn[1])
    assert isinstance(in_turn[2], WorkerFailed) and "no model here" in str(in_turn[2])
    for outcome, name in ((in_turn[0], "a"), (in_turn[3], "d")):
        final, rounds = outcome
        assert final["command"] == "finish" and [r["command"] for r in rounds] == ["round touch"] * 2
        assert {r["name"] for r in rounds} == {name}
    assert in_turn[0][1][1]["clock"] > in_turn[3][1][0]["clock"]  # d's first round before a's second
    sequential = take_turns(starters, rounds=2, sequential=True)
    assert [r["command"] for r in sequential[0][1]] == ["round", "round"]
    assert sequential[0][0]["clock"] < sequential[3][1][0]["clock"]  # a finished before d started
    assert isinstance(sequential[1], WorkerFailed) and isinstance(sequential[2], WorkerFailed)


def test_ratio_text_pairs_rounds_in_turn_and_takes_medians_one_after_another():
    values, base = [2.0, 4.0, None, 8.0, 3.0], [1.0, 1.0, 1.0, 2.0, 1.0]
    assert ratio_text(values, base, in_turn=True) == "3.50x (2.75-4.00)"
    assert ratio_text(values, base, in_turn=False) == "3.50x"  # median 3.5 / median 1.0
    assert (
        ratio_text([None], [1.0], in_turn=True) == "n/a" and ratio_text([None], [1.0], in_turn=False) == "n/a"
    )
