"""The durable motion record (agents/motion_store.py) and the logging setup (agents/logs.py).

The store's writes go through a worker thread, so these trio tests run on the real clock
(an autojump clock would jump to the ``fail_after`` deadline while a thread is fsyncing)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from agents import logs
from agents.logs import JsonFormatter, TextFormatter, configure_logging, emit
from agents.motion_store import FILE_NAME, MotionStore, StoredMotion
from p2p.errors import ConfigError

TIMEOUT = 10  # real seconds; each test takes milliseconds


def motion(n: int, text: str = "Adopt the wire format?") -> StoredMotion:
    return StoredMotion(f"{n:064x}", "client 12D3KooW…abcdef", n, text, ("approve", "reject"))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


# --- MotionStore ---------------------------------------------------------------------


async def test_add_is_true_for_a_new_id_then_false() -> None:
    store = MotionStore(None)
    with trio.fail_after(TIMEOUT):
        assert await store.add(motion(1)) is True
        assert await store.add(motion(1)) is False
        # the id decides, not the rest of the record
        assert await store.add(StoredMotion(motion(1).motion_id, "v2", 99, "other", ("a", "b"))) is False
        assert await store.add(motion(2)) is True
    assert store.ids == {motion(1).motion_id, motion(2).motion_id}
    store.close()


async def test_records_are_written_as_json_lines_and_survive_a_reopen(tmp_path: Path) -> None:
    data = tmp_path / "data" / "v1"  # parents are created
    store = MotionStore(data)
    with trio.fail_after(TIMEOUT):
        assert await store.add(motion(1, "Ünïcode ✓ and \"quotes\"\nand a newline"))
        assert await store.add(motion(2))
        assert not await store.add(motion(1))
    store.close()
    store.close()  # idempotent
    assert lines(data / FILE_NAME) == [
        {"motion_id": motion(1).motion_id, "sender": "client 12D3KooW…abcdef", "seq": 1,
         "text": "Ünïcode ✓ and \"quotes\"\nand a newline", "options": ["approve", "reject"]},
        {"motion_id": motion(2).motion_id, "sender": "client 12D3KooW…abcdef", "seq": 2,
         "text": "Adopt the wire format?", "options": ["approve", "reject"]},
    ]
    assert "✓".encode() in (data / FILE_NAME).read_bytes()  # ensure_ascii=False: readable

    reopened = MotionStore(data)
    assert reopened.ids == {motion(1).motion_id, motion(2).motion_id}
    with trio.fail_after(TIMEOUT):
        assert await reopened.add(motion(1)) is False
        assert await reopened.add(motion(3)) is True
    reopened.close()
    assert [r["seq"] for r in lines(data / FILE_NAME)] == [1, 2, 3]


async def test_a_torn_last_line_is_cut_off_on_open(tmp_path: Path) -> None:
    store = MotionStore(tmp_path)
    with trio.fail_after(TIMEOUT):
        await store.add(motion(1))
    store.close()
    path = tmp_path / FILE_NAME
    good = path.read_bytes()
    with open(path, "ab") as f:  # a crash in the middle of the next write
        f.write(b'{"motion_id": "' + motion(2).motion_id.encode()[:20])

    reopened = MotionStore(tmp_path)
    assert reopened.ids == {motion(1).motion_id}
    assert path.read_bytes() == good  # truncated at once, before anything is appended
    with trio.fail_after(TIMEOUT):
        assert await reopened.add(motion(2)) is True  # the torn motion was never recorded
    reopened.close()
    assert [r["seq"] for r in lines(path)] == [1, 2]
    assert MotionStore(tmp_path).ids == {motion(1).motion_id, motion(2).motion_id}


def test_a_file_holding_only_a_torn_line_becomes_empty(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(b'{"motion_id": "ab')
    store = MotionStore(tmp_path)
    store.close()
    assert store.ids == set()
    assert path.read_bytes() == b""


@pytest.mark.parametrize(
    "bad",
    [
        b"not json\n",
        b"\n",
        b"{}\n",  # no motion_id
        b"[1, 2]\n",
        b'"a string"\n',
        b'{"motion_id": ["unhashable"]}\n',
        b'{"motion_id": "\xff\xfe"}\n',  # not UTF-8
    ],
)
def test_a_corrupt_complete_line_is_a_config_error_naming_the_file(tmp_path: Path, bad: bytes) -> None:
    path = tmp_path / FILE_NAME
    first = json.dumps({"motion_id": "aa", "sender": "v1", "seq": 1, "text": "t", "options": ["x", "y"]}).encode() + b"\n"
    path.write_bytes(first + bad + first)
    with pytest.raises(ConfigError) as info:
        MotionStore(tmp_path)
    assert str(path) in str(info.value)
    assert f"corrupt record at byte {len(first)}" in str(info.value)
    assert path.read_bytes() == first + bad + first  # left alone for the operator to inspect


def test_a_data_dir_that_cannot_be_created_is_a_config_error_naming_the_flag(tmp_path: Path) -> None:
    regular = tmp_path / "a-file"
    regular.write_text("not a directory")
    with pytest.raises(ConfigError) as info:
        MotionStore(regular / "data")
    message = str(info.value)
    assert message.startswith(f"--data {regular / 'data'}: cannot create directory")
    assert "Not a directory" in message


async def test_add_fsyncs_the_record_before_returning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MotionStore(tmp_path)
    path = tmp_path / FILE_NAME
    synced: list[tuple[int, bytes, bool]] = []
    real_fsync = os.fsync
    loop_thread = threading.get_ident()

    def spy(fd: int) -> None:
        # what is in the file when fsync is asked for, and whether we are off the event loop
        synced.append((fd, path.read_bytes(), threading.get_ident() != loop_thread))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with trio.fail_after(TIMEOUT):
        assert await store.add(motion(1))
        assert len(synced) == 1
        assert not await store.add(motion(1))  # a duplicate writes nothing
        assert await store.add(motion(2))
    fd = store._file.fileno()
    store.close()
    assert [s[0] for s in synced] == [fd, fd]
    assert [len(s[1].splitlines()) for s in synced] == [1, 2]  # flushed before fsync
    assert all(off_loop for _, _, off_loop in synced)  # in a worker thread
    assert synced[-1][1] == path.read_bytes()


async def test_concurrent_adds_write_whole_lines(tmp_path: Path) -> None:
    store = MotionStore(tmp_path)
    results: list[bool] = []

    async def add(n: int) -> None:
        results.append(await store.add(motion(n % 10)))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for n in range(30):
                nursery.start_soon(add, n)
    store.close()
    assert sorted(results) == [False] * 20 + [True] * 10
    assert sorted(r["seq"] for r in lines(tmp_path / FILE_NAME)) == list(range(10))


def test_a_store_without_a_directory_writes_nothing(tmp_path: Path) -> None:
    store = MotionStore(None)
    assert store._file is None
    trio.run(store.add, motion(1))
    assert store.ids == {motion(1).motion_id}
    store.close()


# --- logging -------------------------------------------------------------------------

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
