"""The swarm file's validators as the consensus package sees them (keys and powers, in
file order): one conversion, used by the node, the checkpoint service and the verifier."""

from __future__ import annotations

from consensus.types import Validator, ValidatorSet
from p2p.swarmfile import SwarmConfig


def consensus_valset(swarm: SwarmConfig) -> ValidatorSet:
    return ValidatorSet(tuple(Validator(v.public_key, v.power) for v in swarm.validators))
