"""The options grammar: agents/grammar.py.

The grammar text is checked by ``Gbnf`` below, a small parser that follows llama.cpp's
``llama-grammar.cpp`` (``parse_space``, ``parse_char``, ``parse_sequence``): the same
escapes (anything else is an error), comments, and the rule that a newline ends a rule
unless inside a group or after ``|``. It compiles the grammar to a Python regex, so the
tests can ask what strings the grammar admits rather than how its text looks.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agents.grammar import (
    MAX_REASON_CHARS,
    REASON_SEPARATOR,
    OutputFormatError,
    check_options,
    check_reason,
    gbnf_literal,
    is_reason_char,
    grammar_sha256,
    options_grammar,
    parse_output,
)
from p2p.errors import LocalProtocolError
from p2p.messages import MAX_OPTION_LEN, MAX_OPTIONS, NO_SUPERMAJORITY

# --- a small GBNF parser (llama.cpp's syntax) -------------------------------------------


class GbnfError(Exception):
    pass


class Gbnf:
    """Parses GBNF text; ``regex(rule)`` is a Python regex for the language of ``rule``."""

    _ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]"}
    _HEX = {"x": 2, "u": 4, "U": 8}

    def __init__(self, text: str) -> None:
        self.src = text
        self.rules: dict[str, list] = {}
        self.literals: list[str] = []  # every string literal, decoded
        pos = self._space(0, True)
        while pos < len(self.src):
            pos = self._rule(pos)
        if "root" not in self.rules:
            raise GbnfError("no root rule")

    def _space(self, pos: int, newline_ok: bool) -> int:
        s = self.src
        while pos < len(s) and (s[pos] in " \t#" or (newline_ok and s[pos] in "\r\n")):
            if s[pos] == "#":
                while pos < len(s) and s[pos] not in "\r\n":
                    pos += 1
            else:
                pos += 1
        return pos

    def _name(self, pos: int) -> tuple[str, int]:
        m = re.compile(r"[A-Za-z0-9-]+").match(self.src, pos)
        if not m:
            raise GbnfError(f"expecting name at {self.src[pos:pos + 20]!r}")
        return m.group(), m.end()

    def _rule(self, pos: int) -> int:
        name, pos = self._name(pos)
        pos = self._space(pos, False)
        if not self.src.startswith("::=", pos):
            raise GbnfError(f"expecting ::= at {self.src[pos:pos + 20]!r}")
        if name in self.rules:
            raise GbnfError(f"rule {name} defined twice")
        alts, pos = self._alternates(self._space(pos + 3, True), nested=False)
        self.rules[name] = alts
        if pos < len(self.src):
            if self.src[pos] == "\r":
                pos += 1
            if pos >= len(self.src) or self.src[pos] != "\n":
                raise GbnfError(f"expecting newline or end at {self.src[pos:pos + 20]!r}")
        return self._space(pos, True)

    def _alternates(self, pos: int, nested: bool) -> tuple[list, int]:
        seq, pos = self._sequence(pos, nested)
        alts = [seq]
        while pos < len(self.src) and self.src[pos] == "|":
            seq, pos = self._sequence(self._space(pos + 1, True), nested)
            alts.append(seq)
        return alts, pos

    def _char(self, pos: int) -> tuple[str, int]:
        s = self.src
        if pos >= len(s):
            raise GbnfError("unexpected end of input")
        if s[pos] != "\\":
            return s[pos], pos + 1
        esc = s[pos + 1:pos + 2]
        if esc in self._HEX:
            digits = s[pos + 2:pos + 2 + self._HEX[esc]]
            if not re.fullmatch(r"[0-9A-Fa-f]{%d}" % self._HEX[esc], digits):
                raise GbnfError(f"expecting {self._HEX[esc]} hex chars at {s[pos:pos + 12]!r}")
            return chr(int(digits, 16)), pos + 2 + len(digits)
        if esc in self._ESCAPES:
            return self._ESCAPES[esc], pos + 2
        raise GbnfError(f"unknown escape at {s[pos:pos + 10]!r}")

    def _sequence(self, pos: int, nested: bool) -> tuple[list, int]:
        s, items = self.src, []
        while pos < len(s):
            c = s[pos]
            if c == '"':
                pos += 1
                chars = []
                while True:
                    if pos >= len(s):
                        raise GbnfError("unterminated literal")
                    if s[pos] == '"':
                        break
                    if s[pos] in "\r\n":  # llama.cpp would take it; our grammars must not
                        raise GbnfError("raw newline inside a literal")
                    ch, pos = self._char(pos)
                    chars.append(ch)
                self.literals.append("".join(chars))
                items.append(("lit", "".join(chars)))
                pos = self._space(pos + 1, nested)
            elif c == "[":
                pos += 1
                negated = s.startswith("^", pos)
                pos += negated
                ranges = []
                while pos < len(s) and s[pos] != "]":
                    lo, pos = self._char(pos)
                    hi = lo
                    if s.startswith("-", pos) and s[pos + 1:pos + 2] != "]":
                        hi, pos = self._char(pos + 1)
                    ranges.append((lo, hi))
                if pos >= len(s):
                    raise GbnfError("unterminated character class")
                items.append(("class", negated, ranges))
                pos = self._space(pos + 1, nested)
            elif re.match(r"[A-Za-z0-9-]", c):
                name, pos = self._name(pos)
                items.append(("ref", name))
                pos = self._space(pos, nested)
            elif c == "(":
                alts, pos = self._alternates(self._space(pos + 1, True), nested=True)
                if not s.startswith(")", pos):
                    raise GbnfError("expecting )")
                items.append(("group", alts))
                pos = self._space(pos + 1, nested)
            elif c in "*+?":
                if not items:
                    raise GbnfError("quantifier with nothing before it")
                items[-1] = ("rep", items[-1], {"*": (0, None), "+": (1, None), "?": (0, 1)}[c])
                pos = self._space(pos + 1, nested)
            elif c == "{":
                m = re.compile(r"\{(\d+)(?:(,)(\d*))?\}").match(s, pos)
                if not m or not items:
                    raise GbnfError(f"bad repetition at {s[pos:pos + 12]!r}")
                lo = int(m.group(1))
                hi = lo if not m.group(2) else (int(m.group(3)) if m.group(3) else None)
                if hi is not None and hi < lo:
                    raise GbnfError("repetition maximum below minimum")
                items[-1] = ("rep", items[-1], (lo, hi))
                pos = self._space(m.end(), nested)
            else:
                break
        return items, pos

    def regex(self, rule: str = "root", _stack: tuple = ()) -> str:
        if rule in _stack:
            raise GbnfError(f"recursive rule {rule} (not needed here)")
        if rule not in self.rules:
            raise GbnfError(f"undefined rule {rule}")
        return self._alts_re(self.rules[rule], _stack + (rule,))

    def _alts_re(self, alts: list, stack: tuple) -> str:
        return "(?:" + "|".join("".join(self._item_re(i, stack) for i in seq) for seq in alts) + ")"

    def _item_re(self, item: tuple, stack: tuple) -> str:
        kind = item[0]
        if kind == "lit":
            return re.escape(item[1])
        if kind == "class":
            body = "".join(re.escape(lo) + ("-" + re.escape(hi) if hi != lo else "") for lo, hi in item[2])
            return f"[{'^' if item[1] else ''}{body}]"
        if kind == "ref":
            return self.regex(item[1], stack)
        if kind == "group":
            return self._alts_re(item[1], stack)
        lo, hi = item[2]
        return f"(?:{self._item_re(item[1], stack)}){{{lo},{'' if hi is None else hi}}}"

    def matches(self, text: str) -> bool:
        return re.fullmatch(self.regex(), text, re.DOTALL) is not None


def test_gbnf_checker_rejects_what_llama_cpp_rejects():
    # The checker is only worth something if it fails where llama.cpp fails.
    for bad in ['root ::= "a\\q"', 'root ::= "a"\n  | "b"', 'root ::= "a', "root ::= x", 'x ::= "a"',
                'root ::= "a\\x4"', 'root ::= [a-']:
        with pytest.raises(GbnfError):
            Gbnf(bad).regex()
    ok = Gbnf('# c\nroot ::= "a" |\n  "b" # c\n')
    assert ok.matches("a") and ok.matches("b") and not ok.matches("ab")


# --- strategies -----------------------------------------------------------------------

option_text = st.text(min_size=1, max_size=MAX_OPTION_LEN).filter(lambda o: o.strip() == o and o and o != NO_SUPERMAJORITY)
tricky_option = st.sampled_from([
    "yes", "yes please", 'say "hi"', "back\\slash", "\\", '"', "a\nb", "tab\there", "héllo", "日本語",
    "🎉 party", "a|b", "(x)", "[y]", "#hash", "::=", "x*+?", "{1,2}", "<|im_end|>", "nul\x00byte", "del\x7f",
    "sep\u2028x", "Reason: x",
])
options_lists = st.lists(st.one_of(tricky_option, option_text), min_size=2, max_size=MAX_OPTIONS,
                         unique=True).map(tuple)
valid_reasons = st.text(min_size=1, max_size=MAX_REASON_CHARS).filter(lambda r: check_reason(r) is None)


# --- escaping -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "literal"), [
    ("approve", '"approve"'),
    ("yes please", '"yes please"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("a\\b", '"a\\\\b"'),
    ("line\nbreak", '"line\\nbreak"'),
    ("tab\t", '"tab\\t"'),
    ("cr\r", '"cr\\r"'),
    ("nul\x00", '"nul\\x00"'),
    ("del\x7f", '"del\\x7F"'),
    ("héllo", '"h\\u00E9llo"'),
    ("日本", '"\\u65E5\\u672C"'),
    ("🎉", '"\\U0001F389"'),
    ("a|b (c) [d] #e ::= f* {1,2}", '"a|b (c) [d] #e ::= f* {1,2}"'),
])
def test_literal_escaping(text, literal):
    assert gbnf_literal(text) == literal
    # and llama.cpp's reading of the literal gives the text back
    assert Gbnf(f"root ::= {literal}\n").literals == [text]


def test_grammar_for_default_options_reads_as_expected():
    g = Gbnf(options_grammar(["approve", "reject"]))
    assert g.matches("approve\nReason: it is sound.")
    assert g.matches("reject\nReason: x")
    assert not g.matches("approve")  # the reason line is required
    assert not g.matches("approve\nReason: ")  # and is not empty
    assert not g.matches("approve\nReason:  leading space")
    assert not g.matches("approve\nReason: two\nlines")
    assert not g.matches("maybe\nReason: hm")
    assert not g.matches("approve\nReason: ok\n")  # nothing after the reason
    assert not g.matches("Approve\nReason: ok")


def test_reason_length_is_bounded():
    g = Gbnf(options_grammar(["a", "b"], max_reason_chars=5))
    assert g.matches("a\nReason: 12345")
    assert not g.matches("a\nReason: 123456")
    assert Gbnf(options_grammar(["a", "b"])).matches("a\nReason: " + "x" * MAX_REASON_CHARS)
    assert not Gbnf(options_grammar(["a", "b"])).matches("a\nReason: " + "x" * (MAX_REASON_CHARS + 1))
    one = options_grammar(["a", "b"], max_reason_chars=1)
    assert "{0," not in one and Gbnf(one).matches("b\nReason: !") and not Gbnf(one).matches("b\nReason: !!")


@pytest.mark.parametrize("bad", [0, -1, 1001, True, 2.0])
def test_max_reason_chars_is_checked(bad):
    with pytest.raises(LocalProtocolError, match="max_reason_chars"):
        options_grammar(["a", "b"], max_reason_chars=bad)


def test_options_that_prefix_each_other_are_unambiguous():
    options = ["yes", "yes please", "yes\nReason: no"]
    g = Gbnf(options_grammar(options))
    assert g.matches("yes\nReason: please")
    assert g.matches("yes please\nReason: sure")
    assert parse_output("yes\nReason: please", options) == ("yes", "please")
    assert parse_output("yes please\nReason: sure", options) == ("yes please", "sure")
    # an option containing the separator: the last newline decides
    assert parse_output("yes\nReason: no\nReason: ok", options) == ("yes\nReason: no", "ok")


def test_grammar_text_is_ascii_and_hash_is_of_the_text():
    text = options_grammar(["héllo", "🎉"])
    assert text.isascii()
    assert grammar_sha256(text) == hashlib.sha256(text.encode()).hexdigest()
    assert grammar_sha256(text) != grammar_sha256(options_grammar(["héllo", "🎊"]))


@settings(max_examples=200, deadline=None)
@given(options=options_lists)
def test_any_valid_option_list_gives_a_well_formed_grammar(options):
    text = options_grammar(options)
    assert text.isascii()
    g = Gbnf(text)  # parses with llama.cpp's rules
    for opt in options:
        assert gbnf_literal(opt) in text
    choices = [lit for seq in g.rules["choice"] for kind, lit in seq if kind == "lit"]
    assert choices == list(options)  # each option is one literal, decoded verbatim
    for opt in options:
        assert g.matches(f"{opt}{REASON_SEPARATOR}ok")
    assert not g.matches("\x01not an option\nReason: ok")
    assert options_grammar(list(options)) == text  # deterministic, list or tuple


@settings(max_examples=300, deadline=None)
@given(reason=st.text(max_size=MAX_REASON_CHARS + 2))
def test_grammar_reason_class_agrees_with_check_reason(reason):
    g = Gbnf(options_grammar(["a", "b"]))
    assert g.matches(f"a{REASON_SEPARATOR}{reason}") == (check_reason(reason) is None)


def test_check_reason_finds_exactly_the_unsafe_characters_at_every_code_point():
    # check_reason uses one regex class; is_reason_char states the ranges: they agree on
    # all of Unicode, surrogates included.
    for cp in range(0x110000):
        ch = chr(cp)
        assert (check_reason("a" + ch) is None) == is_reason_char(ch), hex(cp)


# --- parse_output ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data(), options=options_lists)
def test_parse_output_round_trips(data, options):
    choice = data.draw(st.sampled_from(options))
    reason = data.draw(valid_reasons)
    out = f"{choice}{REASON_SEPARATOR}{reason}"
    assert Gbnf(options_grammar(options)).matches(out)
    assert parse_output(out, options) == (choice, reason)


@settings(max_examples=100, deadline=None)
@given(options=options_lists, text=st.text(max_size=80))
def test_parse_output_accepts_exactly_what_the_grammar_admits(options, text):
    g = Gbnf(options_grammar(options))
    try:
        parse_output(text, options)
        parsed = True
    except OutputFormatError:
        parsed = False
    assert parsed == g.matches(text)


@pytest.mark.parametrize(("text", "match"), [
    ("approve", "no '\\\\nReason: ' line"),
    ("approve\nreason: ok", "no '\\\\nReason: ' line"),
    ("maybe\nReason: ok", "'maybe', which is not one of the options"),
    ("approve\nReason: ", "1 to 200 characters"),
    ("approve\nReason: " + "x" * 201, "1 to 200 characters"),
    ("approve\nReason:  x", "must not start with a space"),
    ("approve\nReason: ok\n", "no '\\\\nReason: ' line"),
    ("approve\nReason: a\tb", "one line of printable characters"),
])
def test_parse_output_rejects(text, match):
    with pytest.raises(OutputFormatError, match=match):
        parse_output(text, ["approve", "reject"])


def test_parse_output_respects_a_smaller_limit():
    with pytest.raises(OutputFormatError):
        parse_output("a\nReason: 123456", ["a", "b"], max_reason_chars=5)
    assert parse_output("a\nReason: 12345", ["a", "b"], max_reason_chars=5) == ("a", "12345")


# --- option validation (the network's Motion rules) -----------------------------------


@pytest.mark.parametrize(("options", "match"), [
    ([], "2 to 16 options, got 0"),
    (["approve"], "2 to 16 options, got 1"),
    ([f"o{i}" for i in range(MAX_OPTIONS + 1)], "2 to 16 options, got 17"),
    (["approve", ""], "option '' is empty"),
    (["approve", "   "], "is empty or has surrounding spaces"),
    (["approve", " reject"], "surrounding spaces"),
    (["approve", "x" * (MAX_OPTION_LEN + 1)], f"longer than {MAX_OPTION_LEN}"),
    (["approve", "approve"], "options must be distinct"),
    (["approve", 3], "is empty or has surrounding spaces"),
    ("approve", "not one str"),
    (["approve", "bad\ud800"], "lone surrogate"),
])
def test_bad_options_are_rejected_with_the_problem_named(options, match):
    with pytest.raises(LocalProtocolError, match=match):
        options_grammar(options)
    with pytest.raises(LocalProtocolError, match=match):
        parse_output("approve\nReason: ok", options)


def test_check_options_returns_a_tuple():
    assert check_options(["a", "b"]) == ("a", "b")


@given(options=options_lists)
def test_grammar_never_admits_a_text_that_is_not_an_option(options):
    other = "zz" + "".join(options)[:40]
    assume(other not in options)
    assert not Gbnf(options_grammar(options)).matches(f"{other}\nReason: ok")
