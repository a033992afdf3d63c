"""A swarm of real `conclave peer` processes over libp2p on 127.0.0.1."""

from __future__ import annotations

import signal

import pytest

from agents.procs import PeerProcess, propose_json
from p2p.keys import Identity, write_key_file
from tests.integration.conftest import DELIVERY_TIMEOUT, Swarm, received, wait_joined

pytestmark = pytest.mark.integration


def client_key(swarm: Swarm, name: str = "client") -> str:
    path = swarm.dir / f"{name}.key"
    write_key_file(path, Identity.generate())
    return str(path)


def test_four_peers_join_and_each_logs_a_motion_exactly_once(swarm: Swarm) -> None:
    peers = swarm.start_all()
    key = client_key(swarm)
    first = propose_json(swarm.file, key, "Adopt the budget?")["motion_id"]
    # A second motion is the barrier: once every peer has it, a duplicate of the
    # first would have had its chance to arrive as well.
    second = propose_json(swarm.file, key, "Which colour?", "red,green,blue")["motion_id"]
    for p in peers.values():
        event = p.wait_event("motion_received", DELIVERY_TIMEOUT, motion_id=second)
        assert event["options"] == ["red", "green", "blue"]
        assert received(p, first) == 1, f"{p.name} logged {first[:12]} {received(p, first)} times"
        assert received(p, second) == 1
    # SIGTERM and SIGINT both shut a peer down cleanly within 2 seconds.
    for p, sig in zip(peers.values(), [signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT]):
        p.stop(sig, timeout=2.0)
        assert p.proc.returncode == 0, f"{p.name} exited {p.proc.returncode} after {sig.name}"
        stopped = p.named("peer_stopped")
        assert len(stopped) == 1 and stopped[0]["motions"] == 2


def test_peer_killed_and_restarted_rejoins_and_receives_later_motions(swarm: Swarm) -> None:
    peers = swarm.start_all()
    key = client_key(swarm)
    before = propose_json(swarm.file, key, "Before the crash?")["motion_id"]
    peers["v2"].wait_event("motion_received", DELIVERY_TIMEOUT, motion_id=before)
    peers["v2"].stop(signal.SIGKILL)

    again = swarm.start("v2")  # same key, same data directory
    wait_joined(again, {"v1", "v3", "v4"})
    for name in ("v1", "v3", "v4"):
        wait_joined(peers[name], {"v2"})
    after = propose_json(swarm.file, key, "After the restart?")["motion_id"]
    again.wait_event("motion_received", DELIVERY_TIMEOUT, motion_id=after)
    # The motion it had before the crash is on disk: never reported a second time.
    assert received(again, before) == 0
    assert received(again, after) == 1


def test_observer_receives_motions_without_being_a_validator(swarm: Swarm) -> None:
    swarm.start_all()
    observer_key = swarm.dir / "observer.key"
    write_key_file(observer_key, Identity.generate())
    observer = swarm.start("observer", key=observer_key)
    started = observer.wait_event("peer_started", DELIVERY_TIMEOUT)
    assert started["role"] == "observer"
    wait_joined(observer, {"v1", "v2", "v3", "v4"})
    motion = propose_json(swarm.file, client_key(swarm), "Seen by observers too?")["motion_id"]
    observer.wait_event("motion_received", DELIVERY_TIMEOUT, motion_id=motion)
    assert received(observer, motion) == 1


def test_a_peer_that_was_down_is_dialled_again_until_it_answers(swarm: Swarm) -> None:
    """v4 starts late and does not dial anyone itself (its copy of the swarm file lists
    no addresses, which leaves the swarm id unchanged): the others' reconnect loops,
    retrying with backoff since they started, must be what connects it."""
    early = {name: swarm.start(name) for name in ("v1", "v2", "v3")}
    for p in early.values():
        wait_joined(p, {"v1", "v2", "v3"} - {p.name})
        # They have tried v4 and failed at least once by now (it is not listening).
    silent = swarm.dir / "no-addrs.toml"
    text = swarm.file.read_text()
    silent.write_text("\n".join(line for line in text.splitlines() if not line.startswith("addrs = ")))
    v4 = PeerProcess("v4", ["--swarm", str(silent), "--key", str(swarm.key("v4")),
                            "--listen", swarm.cfg.validators[3].addrs[0]])
    swarm.procs.append(v4)
    assert v4.wait_event("peer_started", DELIVERY_TIMEOUT)["role"] == "validator"
    for p in early.values():
        wait_joined(p, {"v4"})
    wait_joined(v4, {"v1", "v2", "v3"})
