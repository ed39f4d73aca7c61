"""Session affinity table (services/router/sessions.py): LRU + TTL bounds."""

import pytest

from services.router.sessions import SessionTable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_set_get_forget():
    t = SessionTable()
    assert t.get("s1") is None
    t.set("s1", "e1")
    t.set("s1", "e2")  # the session follows its latest turn
    assert t.get("s1") == "e2" and len(t) == 1
    t.forget("s1")
    assert t.get("s1") is None


def test_least_recently_routed_session_is_evicted():
    t = SessionTable(max_sessions=2)
    t.set("s1", "e1")
    t.set("s2", "e1")
    t.set("s1", "e2")  # s1 routed again: s2 is now the oldest
    t.set("s3", "e3")
    assert len(t) == 2 and t.evicted == 1
    assert t.get("s2") is None
    assert t.get("s1") == "e2" and t.get("s3") == "e3"


def test_sessions_expire_after_ttl_and_reads_do_not_extend_them():
    clock = Clock()
    t = SessionTable(ttl=10.0, clock=clock)
    t.set("s1", "e1")
    clock.now = 9.0
    assert t.get("s1") == "e1"
    clock.now = 10.5
    assert t.get("s1") is None and t.expired == 1


def test_expire_drops_old_entries_only():
    clock = Clock()
    t = SessionTable(ttl=10.0, clock=clock)
    t.set("old", "e1")
    clock.now = 8.0
    t.set("new", "e2")
    clock.now = 12.0
    assert t.expire() == 1
    assert t.get("new") == "e2" and len(t) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"max_sessions": 0}, "max_sessions"), ({"ttl": 0}, "ttl")]
)
def test_bounds_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SessionTable(**kwargs)
