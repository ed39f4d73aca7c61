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


# -- affinity keys: the caller's session id, else the conversation's ----------------------


def chat(*messages, session_id=""):
    from switchyard.v1 import inference_pb2 as pb

    req = pb.GenerateRequest(session_id=session_id)
    for role, content in messages:
        req.conversation.messages.add(role=role, content=content)
    return req


def test_every_turn_of_a_conversation_has_its_first_turns_key():
    from services.router.sessions import CONVERSATION_PREFIX, conversation_key

    first = chat(("system", "You are terse."), ("user", "Plan a trip to Lyon."))
    later = chat(
        ("system", "You are terse."),
        ("user", "Plan a trip to Lyon."),
        ("assistant", "Day one: the old town."),
        ("user", "And day two?"),
    )
    key = conversation_key("acme", first)
    assert key.startswith(CONVERSATION_PREFIX)
    assert conversation_key("acme", later) == key
    # Another opening, another system prompt or another tenant: another conversation.
    assert conversation_key("acme", chat(("system", "You are terse."), ("user", "Hi."))) != key
    assert (
        conversation_key("acme", chat(("system", "Be kind."), ("user", "Plan a trip to Lyon.")))
        != key
    )
    assert conversation_key("globex", first) != key
    # Where the boundary between messages falls is part of the key, not just the text.
    one = chat(("system", "a1:b"), ("user", "x"))
    two = chat(("system", "a"), ("system", "b"), ("user", "x"))
    assert conversation_key("acme", one) != conversation_key("acme", two)


def test_no_conversation_no_key():
    from services.router.sessions import conversation_key
    from switchyard.v1 import inference_pb2 as pb

    assert conversation_key("acme", pb.GenerateRequest(prompt="Once upon a time")) == ""
    assert conversation_key("acme", chat(("system", "You are terse."))) == ""


def test_the_callers_session_id_wins_and_is_the_tenants_own():
    from services.router.sessions import affinity_key

    req = chat(("user", "Plan a trip to Lyon."), session_id="s-1")
    assert affinity_key("acme", "s-1", req) == "acme/s-1"
    assert affinity_key("globex", "s-1", req) == "globex/s-1"
    assert affinity_key("acme", "", req).startswith("~conv:")
