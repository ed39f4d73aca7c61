"""The local supervisor (services/mesh/supervisor.py) with fake processes and a fake clock."""

import threading
import time

from services.mesh.supervisor import (
    BACKOFF,
    CRASH_LOOP,
    RETIRED,
    RUNNING,
    Child,
    RestartPolicy,
    Supervisor,
    exit_description,
)


class FakeProc:
    _pids = iter(range(1000, 100000))

    def __init__(self):
        self.pid = next(self._pids)
        self.code = None
        self.reaped = False

    def reap(self):
        self.reaped = True

    def poll(self):
        return self.code


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


POLICY = RestartPolicy(backoff_initial=1.0, backoff_max=4.0, max_exits=3, window=60.0)


def make(policy=POLICY):
    said, changes = [], [0]
    clock = Clock()
    sup = Supervisor(
        said.append,
        policy=policy,
        clock=clock,
        on_change=lambda: changes.__setitem__(0, changes[0] + 1),
    )
    started = []

    def start():
        p = FakeProc()
        started.append(p)
        return p

    child = sup.add(
        Child(
            name="l4-small-0",
            kind="engine",
            proc=FakeProc(),
            start=start,
            wait_ready=lambda p: None,
        )
    )
    return sup, child, clock, said, started, changes


def settle(sup, child, state):
    """Run the restart thread a check() may have started, until the child reaches `state`."""
    deadline = time.monotonic() + 5
    while child.state != state:
        assert time.monotonic() < deadline, child.state
        time.sleep(0.01)


def test_a_process_that_dies_is_restarted_after_a_backoff_and_said_so():
    sup, child, clock, said, started, _ = make()
    child.proc.code = -9
    sup.check()
    assert child.state == BACKOFF and child.last_exit == "killed by SIGKILL"
    assert child.proc.reaped  # its orphans (vLLM's engine core) are killed with it
    assert said[-1].startswith("[up] engine l4-small-0 killed by SIGKILL; restarting it in 1s")
    sup.check()  # the backoff is not over yet
    assert started == []
    clock.now += 1.0
    sup.check()
    settle(sup, child, RUNNING)
    assert child.proc is started[0] and child.restarts == 1
    assert "is back" in said[-1]
    assert child.describe()["restarts"] == 1 and child.describe()["pid"] == started[0].pid


def test_the_backoff_doubles_and_a_crash_loop_is_left_down():
    sup, child, clock, said, started, _ = make()
    delays = []
    for _ in range(2):
        child.proc.code = 3
        sup.check()
        delays.append(child.retry_at - clock.now)
        clock.now += delays[-1]
        sup.check()
        settle(sup, child, RUNNING)
    assert delays == [1.0, 2.0]
    child.proc.code = 3
    sup.check()  # the third exit within the window
    assert child.state == CRASH_LOOP and "crash-looping; it stays down" in said[-1]
    clock.now += 100
    sup.check()
    assert len(started) == 2


def test_exits_outside_the_window_are_forgotten():
    sup, child, clock, _, started, _ = make()
    for _ in range(4):
        child.proc.code = 1
        sup.check()
        clock.now += 61  # each exit is alone in its window
        sup.check()
        settle(sup, child, RUNNING)
    assert len(started) == 4 and child.state == RUNNING


def test_a_retired_child_is_not_restarted_and_nothing_starts_after_stop():
    sup, child, _, _, started, _ = make()
    sup.retire("l4-small-0")
    child.proc.code = 0
    sup.check()
    assert child.state == RETIRED and started == []
    sup2, child2, clock2, _, started2, _ = make()
    child2.proc.code = -15
    sup2.check()
    sup2.stop()
    clock2.now += 10
    sup2.check()
    assert started2 == [] and child2.state == BACKOFF


def test_a_restart_that_fails_before_serving_counts_as_an_exit():
    sup, child, clock, said, _, _ = make()

    def not_ready(p):
        p.code = 1
        raise RuntimeError("l4-small-0 exited with 1 before serving; last log lines: ...")

    child.wait_ready = not_ready
    child.proc.code = -9
    sup.check()
    clock.now += 1
    sup.check()
    settle(sup, child, BACKOFF)
    assert any("did not come back" in line for line in said)
    assert len(child.exits) == 2


def test_the_thread_notices_exits_by_itself():
    policy = RestartPolicy(backoff_initial=0.01, backoff_max=0.01)
    said = []
    sup = Supervisor(said.append, policy=policy, poll_seconds=0.01)
    done = threading.Event()
    child = sup.add(
        Child(
            name="safety",
            kind="safety",
            proc=FakeProc(),
            start=FakeProc,
            wait_ready=lambda p: done.set(),
        )
    )
    sup.start()
    try:
        child.proc.code = -9
        assert done.wait(5)
        settle(sup, child, RUNNING)
    finally:
        sup.stop()


def test_exit_descriptions():
    assert exit_description(-9) == "killed by SIGKILL"
    assert exit_description(3) == "exited with status 3"
    assert exit_description(-200) == "killed by signal 200"
