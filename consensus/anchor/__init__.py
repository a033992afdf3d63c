"""Chain anchors for checkpoints: the ``CheckpointRegistry`` contract, its compiled
artifact, the digest validators sign, and the clients that talk to a chain.

The one part of ``consensus/`` that does I/O (JSON-RPC, files): the purity test
(tests/unit/test_purity.py) exempts this package and nothing else.
"""
