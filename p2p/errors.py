"""Errors, split by who is at fault (as h11 does).

- ``RemoteProtocolError``: a peer sent something invalid. Carries a machine-readable
  ``reason`` (one of ``RejectReason``) so that rejections can be counted.
- ``LocalProtocolError``: we misused the API (a bug or a bad argument on our side).
- ``ConfigError``: a file the operator gave us is wrong; names the field or path.
"""

from __future__ import annotations

import enum


class ConclaveError(Exception):
    """Base class of every error this project raises on purpose."""


class RejectReason(enum.StrEnum):
    """Why an incoming message was rejected. The values appear in logs and metrics."""

    TOO_LARGE = "too_large"
    UNDECODABLE = "undecodable"
    BAD_VERSION = "bad_version"
    UNKNOWN_TYPE = "unknown_type"
    WRONG_SWARM = "wrong_swarm"
    NOT_MEMBER = "not_member"
    BAD_SIGNATURE = "bad_signature"
    BAD_PAYLOAD = "bad_payload"
    REPLAY = "replay"
    RATE_LIMITED = "rate_limited"


class RemoteProtocolError(ConclaveError):
    """A peer's message broke the protocol. Never raised out of a receive loop."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class LocalProtocolError(ConclaveError):
    """Our own code asked for something the protocol forbids."""


class ConfigError(ConclaveError):
    """A configuration or key file is invalid. The message names the file and field."""


class KeyFileError(ConfigError):
    """A key file is missing, malformed, too widely readable, or would be overwritten."""
