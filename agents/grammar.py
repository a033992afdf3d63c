"""A motion's options as a llama.cpp GBNF grammar, and the parser for what it admits.

The model may write exactly::

    <one option, verbatim>\\nReason: <a reason of 1..max_reason_chars characters>

and nothing after it. The reason is one line of "safe" characters (``is_reason_char``):
no C0/C1 control characters (so no newline), no DEL, no U+2028/U+2029 line separators,
no surrogates, and it starts with a non-space character so it is never blank.

Options that are prefixes of one another ("yes", "yes please") stay unambiguous: the
reason holds no newline, so the *last* newline of the output is the one before
``Reason: `` and everything before it is the option.

The grammar text is pure ASCII: every character of an option outside printable ASCII
is written as a ``\\xHH``/``\\uHHHH``/``\\UHHHHHHHH`` escape, which llama.cpp's parser
(``parse_char`` in ``llama-grammar.cpp``) reads as that code point. Keeping it ASCII
means the grammar's sha256, which goes into the ballot's fingerprint, never depends on
how a file or terminal encodes text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from p2p.errors import ConclaveError, LocalProtocolError
from p2p.messages import Motion

MAX_REASON_CHARS = 200
REASON_SEPARATOR = "\nReason: "
# llama.cpp expands x{0,n} into n helper rules and refuses repetitions near 2000.
_MAX_REASON_LIMIT = 1000

# Code points the reason may not contain: C0 controls, DEL, C1 controls, line/paragraph
# separators, and surrogates (a model never writes them, but a Python string may hold
# one and it cannot be encoded). Kept as (lo, hi) ranges so the grammar's class and the
# Python check agree.
_UNSAFE_RANGES = ((0x00, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029), (0xD800, 0xDFFF))

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


class OutputFormatError(ConclaveError):
    """The model's text is not "<option>\\nReason: <reason>" for this motion's options.

    Grammar-constrained output always matches; seeing this means the runtime did not
    apply the grammar, or generation stopped early (``max_tokens`` too small).
    """


# The same ranges as one character class: every received ballot's reason is checked, and
# a per-character loop was a tenth of a validator's CPU under load (issue 7's profile).
_UNSAFE_CHAR = re.compile("[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in _UNSAFE_RANGES) + "]")


def is_reason_char(ch: str) -> bool:
    cp = ord(ch)
    return not any(lo <= cp <= hi for lo, hi in _UNSAFE_RANGES)


def check_reason(reason: object, max_chars: int = MAX_REASON_CHARS) -> str | None:
    """Why ``reason`` is not a valid reason, or None when it is."""
    if not isinstance(reason, str):
        return f"a reason must be a string, got {type(reason).__name__}"
    if not 1 <= len(reason) <= max_chars:
        return f"a reason must be 1 to {max_chars} characters, got {len(reason)}"
    if reason[0] == " ":
        return "a reason must not start with a space"
    bad = _UNSAFE_CHAR.search(reason)
    if bad is not None:
        return f"a reason must be one line of printable characters, found {bad.group()!r}"
    return None


def check_options(options: Sequence[str]) -> tuple[str, ...]:
    """The options as a tuple, validated by the same rules as a network ``Motion``."""
    if isinstance(options, (str, bytes)):
        raise LocalProtocolError(f"options must be a sequence of strings, not one {type(options).__name__}")
    opts = tuple(options)
    Motion(text="x", options=opts)  # raises LocalProtocolError naming the problem
    for opt in opts:
        try:
            opt.encode("utf-8")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"option {opt!r} is not valid unicode (lone surrogate)") from None
    return opts


def _hex_escape(cp: int) -> str:
    if cp < 0x80:
        return f"\\x{cp:02X}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04X}"
    return f"\\U{cp:08X}"


def _escape_char(ch: str) -> str:
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    return ch if 0x20 <= ord(ch) < 0x7F else _hex_escape(ord(ch))


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal, in ASCII, with every escape llama.cpp knows."""
    return '"' + "".join(_escape_char(c) for c in text) + '"'


def _reason_class(exclude_space: bool) -> str:
    ranges = list(_UNSAFE_RANGES)
    if exclude_space:
        ranges[0] = (0x00, 0x20)
    body = "".join(f"{_hex_escape(lo)}-{_hex_escape(hi)}" for lo, hi in ranges)
    return f"[^{body}]"


def options_grammar(options: Sequence[str], max_reason_chars: int = MAX_REASON_CHARS) -> str:
    """The GBNF grammar admitting exactly one option, ``\\nReason: `` and a reason."""
    opts = check_options(options)
    if isinstance(max_reason_chars, bool) or not isinstance(max_reason_chars, int) \
            or not 1 <= max_reason_chars <= _MAX_REASON_LIMIT:
        raise LocalProtocolError(f"max_reason_chars must be an integer from 1 to {_MAX_REASON_LIMIT}")
    rest = max_reason_chars - 1
    reason = _reason_class(exclude_space=True)
    if rest:
        reason += f" {_reason_class(exclude_space=False)}{{0,{rest}}}"
    # llama.cpp ends a rule at a newline unless the line ends with "|" (or is in a group).
    choices = " |\n    ".join(gbnf_literal(o) for o in opts)
    return (
        "# conclave ballot: one option verbatim, then a one-line reason\n"
        f"root ::= choice {gbnf_literal(REASON_SEPARATOR)} reason\n"
        f"choice ::= {choices}\n"
        f"reason ::= {reason}\n"
    )


def grammar_sha256(grammar: str) -> str:
    """Hex sha256 of the grammar text (ASCII by construction; UTF-8 for any other)."""
    return hashlib.sha256(grammar.encode("utf-8")).hexdigest()


def parse_output(text: str, options: Sequence[str], max_reason_chars: int = MAX_REASON_CHARS) -> tuple[str, str]:
    """(choice, reason) from the model's output; ``OutputFormatError`` if it does not match."""
    opts = check_options(options)
    if not isinstance(text, str):
        raise OutputFormatError(f"model output must be text, got {type(text).__name__}")
    # The reason has no newline, so the separator starts at the last newline.
    cut = text.rfind("\n")
    if cut < 0 or not text.startswith(REASON_SEPARATOR, cut):
        raise OutputFormatError(f"model output has no {REASON_SEPARATOR!r} line: {text[:120]!r}")
    choice, reason = text[:cut], text[cut + len(REASON_SEPARATOR):]
    if choice not in opts:
        raise OutputFormatError(f"model chose {choice[:80]!r}, which is not one of the options {list(opts)}")
    problem = check_reason(reason, max_reason_chars)
    if problem:
        raise OutputFormatError(f"model output's reason is invalid: {problem}")
    return choice, reason
