"""No secret reaches a log line, whatever shape it arrives in."""

from __future__ import annotations

import json
import logging

from hypothesis import given
from hypothesis import strategies as st

from fleetkeep.observability import JsonFormatter, request_id_var, scrub
from fleetkeep.tokens import new_token


@given(st.sampled_from(["fka", "fks", "fkd", "fkc"]))
def test_bearer_tokens_are_redacted_anywhere_in_a_message(prefix: str) -> None:
    plain, _ = new_token(prefix)
    for text in (f"token={plain}", f"Authorization: Bearer {plain}", f"got {plain} from x"):
        assert plain not in scrub(text)


def test_password_fields_are_redacted() -> None:
    assert "hunter2" not in scrub('{"email": "a@b.c", "password": "hunter2"}')
    assert "s3cret" not in scrub("bind_password=s3cret host=dc1")


def test_json_lines_carry_the_request_id_and_extras() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.user_id = 7
    token = request_id_var.set("abc123")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["msg"] == "hello you"
    assert line["request_id"] == "abc123"
    assert line["user_id"] == 7
