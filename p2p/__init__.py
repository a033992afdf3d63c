"""Everything that touches the network: identity and key files, the swarm file, signed
envelopes, validation of incoming messages, the libp2p network and an in-memory one.

This is the only package that imports ``libp2p``.
"""
