"""Peer metrics (agents/metrics.py): what is recorded shows up in the Prometheus text,
registries do not leak into each other, misuse is refused, and the HTTP endpoint answers
scrapes and survives bad clients. The endpoint runs on 127.0.0.1 with a free port."""

from __future__ import annotations

import pytest
import trio
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from agents import metrics as metrics_mod
from agents.metrics import MAX_REQUEST_HEAD, MESSAGE_TYPES, PeerMetrics, serve_metrics
from p2p.envelope import MessageType
from p2p.errors import ConfigError, LocalProtocolError, RejectReason

WAIT = 10.0


def samples(m: PeerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``m.render()``, keyed by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_recorded_values_appear_in_the_text_format() -> None:
    m = PeerMetrics()
    m.set_height(42)
    m.set_round(3)
    m.observe_commit(0.8, 1)
    m.observe_commit(4.0, 3)
    m.observe_ballot(0.3)
    m.message_in("vote")
    m.message_in(MessageType.VOTE)
    m.message_out(MessageType.BALLOT_REVEAL)
    m.rejection(RejectReason.BAD_SIGNATURE)
    m.rejection("invalid_block")
    m.set_peers_connected(5)
    m.motion_resolved("supermajority")
    m.motion_resolved("no_supermajority")
    m.motion_resolved("supermajority")
    m.catchup_decisions(7)
    m.evidence()
    got = samples(m)
    assert got[("conclave_height", ())] == 42
    assert got[("conclave_round", ())] == 3
    assert got[("conclave_decisions_total", ())] == 2
    assert got[("conclave_commit_latency_seconds_count", ())] == 2
    assert got[("conclave_commit_latency_seconds_sum", ())] == pytest.approx(4.8)
    assert got[("conclave_commit_latency_seconds_bucket", (("le", "1.0"),))] == 1
    assert got[("conclave_rounds_per_height_bucket", (("le", "1.0"),))] == 1
    assert got[("conclave_rounds_per_height_bucket", (("le", "2.0"),))] == 1
    assert got[("conclave_rounds_per_height_bucket", (("le", "3.0"),))] == 2
    assert got[("conclave_ballot_latency_seconds_count", ())] == 1
    assert got[("conclave_messages_in_total", (("type", "vote"),))] == 2
    assert got[("conclave_messages_out_total", (("type", "ballot_reveal"),))] == 1
    assert got[("conclave_rejections_total", (("reason", "bad_signature"),))] == 1
    assert got[("conclave_rejections_total", (("reason", "invalid_block"),))] == 1
    assert got[("conclave_peers_connected", ())] == 5
    assert got[("conclave_motions_resolved_total", (("outcome_kind", "supermajority"),))] == 2
    assert got[("conclave_motions_resolved_total", (("outcome_kind", "no_supermajority"),))] == 1
    assert got[("conclave_catchup_decisions_total", ())] == 7
    assert got[("conclave_evidence_total", ())] == 1


def test_every_known_label_starts_at_zero_and_registries_are_separate() -> None:
    a, b = PeerMetrics(), PeerMetrics()
    a.message_in("motion")
    a.set_height(9)
    got = samples(b)
    assert {t for (name, labels) in got if name == "conclave_messages_in_total" for _, t in labels} == set(
        MESSAGE_TYPES
    )
    assert set(MESSAGE_TYPES) == {"motion", "status", "proposal", "vote", "ballot_commit", "ballot_reveal",
                                  "checkpoint_signature"}
    assert all(v == 0 for (name, _), v in got.items() if name.endswith("_total"))
    assert got[("conclave_height", ())] == 0
    assert got[("conclave_rejections_total", (("reason", "replay"),))] == 0
    assert samples(a)[("conclave_messages_in_total", (("type", "motion"),))] == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.message_in("gossip"),
        lambda m: m.message_out(""),
        lambda m: m.rejection("Bad Reason"),
        lambda m: m.rejection("x" * 41),
        lambda m: m.observe_commit(-1.0, 1),
        lambda m: m.observe_commit(float("nan"), 1),
        lambda m: m.observe_commit(1.0, 0),
        lambda m: m.observe_ballot(True),
        lambda m: m.set_height(-1),
        lambda m: m.set_round(1.5),
        lambda m: m.motion_resolved("no-supermajority"),
        lambda m: m.catchup_decisions(-2),
    ],
)
def test_misuse_is_refused(call) -> None:
    with pytest.raises(LocalProtocolError):
        call(PeerMetrics())


# -- the HTTP endpoint ------------------------------------------------------------------


async def exchange(port: int, data: bytes, *, close_write: bool = False, host: str = "127.0.0.1") -> bytes:
    """Send ``data``, return everything the server sends until it closes."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(data)
        if close_write:
            await stream.send_eof()
        out = bytearray()
        while chunk := await stream.receive_some(65536):
            out.extend(chunk)
        return bytes(out)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("ascii").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split(" ")[1]), headers, body


async def test_scrape_over_http() -> None:
    m = PeerMetrics()
    m.set_height(12)
    m.message_out("proposal")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, m, "127.0.0.1", 0)
        assert port > 0
        with trio.fail_after(WAIT):
            raw = await exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
            status, headers, body = parse_response(raw)
            assert status == 200
            assert headers["content-type"] == CONTENT_TYPE_LATEST
            assert headers["connection"] == "close" and int(headers["content-length"]) == len(body)
            families = {f.name: f for f in text_string_to_metric_families(body.decode())}
            assert families["conclave_height"].samples[0].value == 12
            out = {s.labels["type"]: s.value for s in families["conclave_messages_out"].samples}
            assert out["proposal"] == 1
            # Values change between scrapes; a query string is ignored.
            m.set_height(13)
            _, _, body = parse_response(await exchange(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"))
            assert b"conclave_height 13.0" in body
            # The stdlib client, as any scraper would be.
            body = await trio.to_thread.run_sync(_urlopen, f"http://127.0.0.1:{port}/metrics")
            assert b"conclave_height 13.0" in body
        nursery.cancel_scope.cancel()


def _urlopen(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        return response.read()


async def test_other_paths_methods_and_garbage() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, PeerMetrics(), "127.0.0.1", 0)
        with trio.fail_after(WAIT):
            assert parse_response(await exchange(port, b"GET / HTTP/1.1\r\n\r\n"))[0] == 404
            assert parse_response(await exchange(port, b"GET /metricsx HTTP/1.1\r\n\r\n"))[0] == 404
            status, headers, body = parse_response(await exchange(port, b"HEAD /metrics HTTP/1.1\r\n\r\n"))
            assert status == 200 and body == b"" and int(headers["content-length"]) > 0
            assert parse_response(await exchange(port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
            # Bare LF line ends are accepted; a request line without a version is not.
            assert parse_response(await exchange(port, b"GET /metrics HTTP/1.1\n\n"))[0] == 200
            assert parse_response(await exchange(port, b"GET /metrics\n\n"))[0] == 400
            for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"hello\r\n\r\n",
                            b"GET metrics HTTP/1.1\r\n\r\n", b"GET /metrics HTTP/9\r\n\r\n"):
                assert parse_response(await exchange(port, garbage))[0] == 400, garbage
            # A head over the limit is refused without waiting for its end.
            huge = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * (MAX_REQUEST_HEAD + 100)
            assert parse_response(await exchange(port, huge))[0] == 400
            # Hanging up mid-request: no answer, and the server carries on.
            assert await exchange(port, b"GET /metr", close_write=True) == b""
            # Whichever address was kept, connecting by name reaches it.
            assert parse_response(await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n", host="localhost"))[0] == 200
        nursery.cancel_scope.cancel()


async def test_a_silent_client_is_dropped_after_the_read_timeout(monkeypatch) -> None:
    monkeypatch.setattr(metrics_mod, "REQUEST_TIMEOUT", 0.3)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, PeerMetrics(), "127.0.0.1", 0)
        with trio.fail_after(WAIT):
            t0 = trio.current_time()
            assert await exchange(port, b"GET /metrics HTTP/1.1\r\n") == b""
            assert 0.25 <= trio.current_time() - t0 < 5
        nursery.cancel_scope.cancel()


async def test_port_in_use_is_a_config_error() -> None:
    taken = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = taken.socket.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=str(port)):
            await serve_metrics(PeerMetrics(), "127.0.0.1", port)
    finally:
        await taken.aclose()
    with pytest.raises(LocalProtocolError):
        await serve_metrics(PeerMetrics(), "127.0.0.1", 70000)


async def test_cancellation_stops_the_service_and_frees_the_port() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, PeerMetrics(), "127.0.0.1", 0)
        nursery.cancel_scope.cancel()
    with trio.fail_after(WAIT):
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        # ... and it can be bound again at once.
        async with trio.open_nursery() as nursery:
            assert await nursery.start(serve_metrics, PeerMetrics(), "127.0.0.1", port) == port
            nursery.cancel_scope.cancel()


async def test_a_name_with_several_addresses_is_served_on_one_reported_port() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, PeerMetrics(), "localhost", 0)
        with trio.fail_after(WAIT):
            # Whichever address was kept, connecting by name reaches it.
            assert parse_response(await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n", host="localhost"))[0] == 200
        nursery.cancel_scope.cancel()
