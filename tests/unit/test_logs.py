"""The logging setup (agents/logs.py): JSON and text formatters, ``emit``, and
``configure_logging`` (flags, levels, libp2p chatter held back)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents import logs
from agents.logs import JsonFormatter, TextFormatter, configure_logging, emit

TS_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def record(msg: str = "hello", level: int = logging.INFO, pathname: str = "/work/main/agents/peer.py",
           name: str = "conclave.test", **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, pathname, 1, msg, None, None)
    rec.created = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger writing JSON lines into a StringIO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("conclave.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def test_json_formatter_emits_one_object_per_line_with_the_fields(captured) -> None:
    logger, stream = captured
    emit(logger, "motion_received", 'MOTION abc from v1: "Ship it?"\nsecond line', motion_id="abc",
         options=["approve", "reject"], path=Path("/tmp/x"), level="spoofed", ts="spoofed")
    emit(logger, "peer_left", "peer left: v2", logging.WARNING, peer="v2")
    out = stream.getvalue()
    assert out.endswith("\n")
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2  # the newline in the message is escaped, not a second line
    first, second = rows
    assert re.fullmatch(TS_RE, first["ts"])
    assert first["level"] == "info"  # a field never overrides the record's own keys
    assert first["event"] == "motion_received"
    assert first["msg"] == 'MOTION abc from v1: "Ship it?"\nsecond line'
    assert first["motion_id"] == "abc"
    assert first["options"] == ["approve", "reject"]
    assert first["path"] == "/tmp/x"  # not JSON-native: rendered with str()
    assert list(first)[:4] == ["ts", "level", "event", "msg"]
    assert second == {"ts": second["ts"], "level": "warning", "event": "peer_left", "msg": "peer left: v2", "peer": "v2"}


def test_json_timestamps_are_iso_8601_utc_with_z() -> None:
    out = json.loads(JsonFormatter().format(record()))
    assert out == {"ts": "2023-11-14T22:13:20.250Z", "level": "info", "event": "conclave.test", "msg": "hello"}


def test_json_formatter_includes_the_exception() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = record(level=logging.ERROR, exc_info=sys.exc_info())
    out = JsonFormatter().format(rec)
    assert "\n" not in out
    obj = json.loads(out)
    assert obj["level"] == "error"
    assert "RuntimeError: boom" in obj["exc"]


def test_emit_below_the_logger_level_builds_no_record(captured) -> None:
    logger, stream = captured
    logger.setLevel(logging.INFO)
    emit(logger, "message_rejected", "rejected", logging.DEBUG, reason="replay")
    assert stream.getvalue() == ""


def test_text_formatter_gives_ts_level_message() -> None:
    line = TextFormatter().format(record("peer v1 started", event="peer_started", fields={"name": "v1"}))
    assert line == "2023-11-14T22:13:20.250Z INFO    peer v1 started"
    warn = TextFormatter().format(record("dial failed", logging.WARNING))
    assert re.fullmatch(TS_RE + r" WARNING dial failed", warn)
    assert "\n" not in warn


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"fmt": "xml"}, "--log-format"),
        ({"fmt": "JSON"}, "--log-format"),
        ({"level": "verbose"}, "--log-level"),
        ({"level": "trace"}, "--log-level"),
    ],
)
def test_configure_logging_rejects_bad_values_naming_the_flag(kwargs: dict, flag: str) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    with pytest.raises(ValueError) as info:
        configure_logging(**kwargs)
    assert str(info.value).startswith(flag)
    assert root.handlers == before  # nothing was changed


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging rewires the root logger and libp2p's: put everything back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    propagate = logging.getLogger("libp2p").propagate
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lg in list(logging.root.manager.loggerDict.items()):
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))
        logging.getLogger("libp2p").propagate = propagate
        logging.captureWarnings(False)


def test_configure_logging_json_routes_our_events_and_holds_back_debug(restore_logging) -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    ours = logging.getLogger("conclave.test.configured")
    emit(ours, "peer_started", "peer v1 started", name="v1")
    emit(ours, "message_rejected", "rejected", logging.DEBUG, reason="replay")
    logging.getLogger("libp2p.pubsub").info("gossip chatter")  # held at WARNING
    logging.getLogger("libp2p.pubsub").warning("a real problem")
    rows = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["event"], r["msg"]) for r in rows] == [
        ("peer_started", "peer v1 started"),
        ("libp2p.pubsub", "a real problem"),
    ]
    assert rows[0]["name"] == "v1"


def test_records_from_libp2p_source_files_below_warning_are_dropped(restore_logging) -> None:
    stream = io.StringIO()
    configure_logging("text", "debug", stream)
    (handler,) = logging.getLogger().handlers
    site = f"{os.sep}venv{os.sep}site-packages{os.sep}libp2p{os.sep}pubsub{os.sep}gossipsub.py"
    for level in (logging.DEBUG, logging.INFO):
        handler.handle(record(f"chatter at {level}", level, pathname=site, name="root"))
    handler.handle(record("libp2p warns", logging.WARNING, pathname=site, name="root"))
    # our own module whose name merely starts with libp2p is not library chatter
    handler.handle(record("ours at debug", logging.DEBUG, pathname="/work/main/p2p/libp2p_net.py"))
    out = stream.getvalue().splitlines()
    assert [line.split(maxsplit=2)[1:] for line in out] == [["WARNING", "libp2p warns"], ["DEBUG", "ours at debug"]]


def test_configure_logging_text_format(restore_logging) -> None:
    stream = io.StringIO()
    configure_logging("text", "warning", stream)
    log = logging.getLogger("conclave.test.text")
    emit(log, "peer_started", "not shown at warning")
    emit(log, "dial_failed", "could not dial v2", logging.WARNING, peer="v2")
    (line,) = stream.getvalue().splitlines()
    assert re.fullmatch(TS_RE + r" WARNING could not dial v2", line)


def test_every_level_flag_is_accepted(restore_logging) -> None:
    for level in logs.LEVELS:
        configure_logging("text", level, io.StringIO())
        assert logging.getLogger().level == getattr(logging, level.upper())
