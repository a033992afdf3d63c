"""Deterministic whole-cluster simulation of the consensus core: n validators, up to f of
them Byzantine, over a seeded lossy network, on a virtual clock. Pure like the rest of
``consensus/``: its randomness is its own seeded generator (``rng.Rng``)."""

from consensus.sim.byzantine import BEHAVIOURS
from consensus.sim.harness import Checker, SimResult, Simulation, Summary, run_many, scenario
from consensus.sim.network import NetworkConfig, Partition
from consensus.sim.rng import Rng

__all__ = ["BEHAVIOURS", "Checker", "NetworkConfig", "Partition", "Rng", "SimResult", "Simulation", "Summary",
           "run_many", "scenario"]
