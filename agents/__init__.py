"""The agent peer: configuration, logging, the peer service and the `conclave` CLI."""

__version__ = "0.1.0"
