"""The local SendGrid counts every recipient but builds only the messages it keeps."""

from __future__ import annotations

from typing import Any

from libs.mail.sink import SinkState


def _payload(count: int) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {"to": [{"email": f"User{i}@Example.com"}], "substitutions": {"-n-": f"N{i}"}}
        for i in range(count)
    ]
    items[-1]["custom_args"] = {"campaign_id": "other", "recipient_id": "9"}
    items[-1]["cc"] = [{"email": "cc@example.com"}]
    return {
        "personalizations": items,
        "from": {"email": "news@example.com"},
        "subject": "Hi -n-",
        "content": [{"type": "text/html", "value": "<p>-n-</p>"}],
        "custom_args": {"campaign_id": "c1"},
        "headers": {"List-Id": "<l.example.com>"},
    }


def test_every_recipient_is_counted_and_the_last_ones_kept_whole() -> None:
    state = SinkState(keep_messages=2)
    assert state.record(_payload(5), "m1") == 6
    assert state.received[("c1", "user0@example.com")] == 1
    assert state.received[("c1", "user3@example.com")] == 1
    assert state.received[("other", "user4@example.com")] == 1
    assert state.received[("other", "cc@example.com")] == 1
    assert state.stats()["messages"] == 6
    assert state.received_in("other") == {"user4@example.com": 1, "cc@example.com": 1}
    assert state.received_in("nobody") == {}
    kept = list(state.messages)
    assert [m.email for m in kept] == ["User4@Example.com", "cc@example.com"]
    assert kept[0].custom_args == {"campaign_id": "other", "recipient_id": "9"}
    assert kept[0].headers == {"List-Id": "<l.example.com>"}
    assert kept[0].subject == "Hi N4" and kept[0].html == "<p>N4</p>"


def test_without_a_limit_every_message_is_kept() -> None:
    state = SinkState()
    state.record(_payload(3), "m1")
    assert [m.email for m in state.messages][:3] == [f"User{i}@Example.com" for i in range(3)]
    assert state.messages[0].custom_args == {"campaign_id": "c1"}
