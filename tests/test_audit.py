"""consulspawner.audit: one JSON line per event on its own logger, and never a secret."""

import json
import logging
import uuid

import pytest

from consulspawner import audit, ownership

OWNER = ownership.Owner(
    hub="main",
    user="alice",
    server="gpu",
    service="jupyter-alice--gpu",
    expires_at=1_800_000_000,
    incarnation="9f" * 16,
)
# What the secrets of this project look like (made up here, never real ones).
SECRET_ID = "b1e3f2a4-5c6d-4e7f-8a9b-0c1d2e3f4a5b"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"


@pytest.fixture
def records(caplog):
    caplog.set_level(logging.INFO, logger="consulspawner.audit")
    return caplog


def audit_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "consulspawner.audit"]


def test_one_json_line_with_every_field_in_order(records):
    audit.emit_for("grant", OWNER, trino_user="alice", destination="trino", cause="server started")
    (event,) = audit_lines(records)
    assert list(event) == list(audit.FIELDS)
    assert event["event"] == "grant"
    assert event["hub_instance"] == "main"
    assert event["hub_user"] == "alice"
    assert event["server_name"] == "gpu"
    assert event["service"] == "jupyter-alice--gpu"
    assert event["incarnation"] == "9f" * 16
    assert event["trino_user"] == "alice"
    assert event["destination"] == "trino"
    assert event["expiry"] == "2027-01-15T08:00:00.000Z"
    assert event["cause"] == "server started"
    assert event["time"].endswith("Z")
    (record,) = [r for r in records.records if r.name == "consulspawner.audit"]
    assert record.levelno == logging.INFO
    assert "\n" not in record.getMessage()
    assert record.audit == event  # for handlers that ship structured data


def test_every_event_kind_and_no_other():
    for event in audit.EVENTS:
        assert audit.build(event, hub_instance="main")["event"] == event
    with pytest.raises(ValueError):
        audit.build("granted", hub_instance="main")


def test_a_user_name_in_any_script_stays_readable(records):
    owner = ownership.Owner(hub="main", user="José 山田", server="", service="jupyter-jose", incarnation="ab")
    audit.emit_for("revoke", owner, cause="expired")
    (record,) = [r for r in records.records if r.name == "consulspawner.audit"]
    assert "José 山田" in record.getMessage()


@pytest.mark.parametrize("secret", [SECRET_ID, SECRET_ID.upper(), str(uuid.uuid4()), JWT, PEM, f"token {SECRET_ID}!"])
@pytest.mark.parametrize("field", ["hub_user", "server_name", "service", "trino_user", "destination", "cause"])
def test_a_secret_shaped_value_is_withheld_and_named_only(records, field, secret):
    event = audit.emit("token-login", hub_instance="main", **{field: secret})
    assert event[field] == audit.WITHHELD
    assert event["withheld"] == [field]
    text = "\n".join(r.getMessage() for r in records.records) + repr([r.__dict__ for r in records.records])
    for part in (secret, SECRET_ID, JWT.split(".")[1], "MIIE"):
        assert part not in text
    # The warning names the field, on a logger outside the audit trail (not a child of it).
    assert [r.levelno for r in records.records if r.name == "consulspawner.audit"] == [logging.INFO]
    assert any(field in r.getMessage() and r.levelno == logging.WARNING for r in records.records)


def test_a_non_string_value_is_checked_as_its_text():
    class Carrier:
        def __str__(self):
            return f"carrier of {SECRET_ID}"

    event = audit.build("teardown", hub_instance="main", cause=Carrier())
    assert event["cause"] == audit.WITHHELD


def test_ordinary_values_pass():
    event = audit.build(
        "extend",
        hub_instance="main",
        hub_user="alice",
        service="jupyter-alice",
        incarnation=uuid.uuid4().hex,  # what mesh.new_incarnation makes: no dashes, not a SecretID
        trino_user="alice",
        destination="trino-coordinator",
        expiry=1_800_000_000.5,
        cause="keeper extended",
        now=1_800_000_000,
    )
    assert "withheld" not in event
    assert event["time"] == "2027-01-15T08:00:00.000Z"
    assert event["expiry"] == "2027-01-15T08:00:00.500Z"


def test_the_documented_logging_config_writes_one_json_line_per_event(tmp_path):
    """docs/operations.md's snippet, merged by traitlets as JupyterHub merges it."""
    import re
    from pathlib import Path

    from traitlets.config import Application, Config

    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", doc, re.S) if "logging_config" in block]
    target = tmp_path / "audit.jsonl"
    snippet = snippet.replace("/var/log/jupyterhub/consulspawner-audit.jsonl", str(target))
    c = Config()
    exec(snippet, {"c": c})

    class Hub(Application):
        pass

    audit_logger = logging.getLogger("consulspawner.audit")
    saved = (audit_logger.handlers[:], audit_logger.level, audit_logger.propagate)
    try:
        Hub(logging_config=c.JupyterHub.logging_config)._configure_logging()
        audit.emit_for("grant", OWNER, trino_user="alice", destination="trino", cause="server started")
        audit.emit_for("revoke", OWNER, destination="trino", cause="server stopped")
        for handler in audit_logger.handlers:
            handler.flush()
        lines = target.read_text().splitlines()
    finally:
        for handler in audit_logger.handlers:
            handler.close()
        audit_logger.handlers, audit_logger.level, audit_logger.propagate = saved
    assert [json.loads(text)["event"] for text in lines] == ["grant", "revoke"]
    assert all(text.startswith("{") for text in lines)
