"""The agreement protocol as a pure, deterministic state machine (Tendermint-style BFT).

No trio, no clock, no randomness, no sockets here: inputs in, effects out. The one
exception is ``consensus/anchor/`` (chain anchors), which does I/O and says so.
``tests/unit/test_purity.py`` keeps it that way.
"""
