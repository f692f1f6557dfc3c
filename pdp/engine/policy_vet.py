"""Vet a policy's text against the safe subset of Polar before any of it runs.

Polar can reach the host's Python objects: a dot after a string reaches its methods, and
from there `__class__`, `__subclasses__()`, `os.system`. So no policy text is loaded until
it has been read here, token by token and rule by rule, by the Polar grammar as oso 0.27
lexes and parses it (polar-core's lexer.rs and polar.lalrpop), and found to use only:

- rules `name(params) if body;` and facts `name(params);` — no inline queries (`?=`, which
  run at load), no resource blocks, no `type` declarations, no specializers (`x: Class`);
- variables, strings, numbers, booleans, and lists and dictionaries of constants only
  (a list holding a variable builds a term at each use: a recursive rule could double
  one until memory runs out);
- terms at most `MAX_TERM_DEPTH` deep, counting each operand of a chain such as
  `a + b + c` or `r.x.y` (oso nests those, and a deep enough term ends its process);
- `and`, `or`, `not`, `cut`, `forall`, `in`, `=`, `:=`, comparisons, arithmetic, and
  calls of rules;
- `x.field` where `field` is one of the fields the service gives a policy
  (`pdp.model.policy_schema.FIELDS`) and is not called.

Refused: any method call, any other attribute, `new`, `matches`/`isa`, `print`, `debug`,
the dynamic lookups `x.(y)` / `x.("name")` / `.(x, y)`, names with `__`, names that
start with a capital letter (oso binds class names such as `String` to host classes),
non-ASCII characters outside strings and comments (look-alike letters), and control,
format (bidi) or other invisible characters anywhere. A refusal names the file, line and
column and the construct. This module imports nothing of oso: it is pure text checking,
the first of the guards (pdp.engine.policy_engine also refuses at run time any call the Polar
VM would make into Python, and candidates run in pdp.engine.policy_sandbox).

The same reading checks the invariants the decision cache relies on (the header of
policies/rules.polar): in the rules that `decision` reaches, each field of the record has
a kind (`pdp.model.policy_schema.KINDS`), and a use its kind does not allow is refused
the same way (`ShapeBroken`, an `UnsafePolicy`): a timestamp compared with a constant or
another timestamp or computed with, `now` compared with anything but a timestamp, an id or
a municipality code compared with a constant other than "" (directly, in a constant list,
or given to a rule that has a rule for that constant), ordered or computed with, an id
list compared with anything but [], the relationships compared whole. Polar has no
indexing and a policy's lists hold constants only, so the order of a list shows only in
such comparisons. What the text cannot show (a constant through a variable, another
municipality's relationship read) is for the property check, pdp.engine.shape_check.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from pdp.model.policy_schema import (
    CODE,
    CODE_LIST,
    FIELDS,
    ID,
    ID_LIST,
    KINDS,
    NOW,
    TIMESTAMP,
    UNORDERED,
)

MAX_SOURCE_CHARS = 512 * 1024
MAX_TOKENS = 200_000
MAX_TERM_DEPTH = 100  # oso ends the process somewhere past ten thousand
MAX_NESTING = 32

_NAME = re.compile(r"[a-z_][A-Za-z0-9_]*\Z")
_KEYWORDS = {
    "true": "bool", "false": "bool", "inf": "number", "nan": "number", "new": "new",
    "in": "in", "cut": "cut", "debug": "debug", "print": "print", "isa": "isa",
    "forall": "forall", "if": "if", "and": "and", "or": "or", "not": "not",
    "matches": "matches", "type": "type", "mod": "mod", "rem": "rem", "trace": "trace",
}
# Keywords whose very presence is refused, with the construct named.
_REFUSED_KEYWORDS = {
    "new": "`new` (constructs a host object)",
    "debug": "`debug` (stops the engine for a debugger)",
    "print": "`print` (writes to the service's output)",
    "isa": "`isa`", "matches": "`matches` (asks the host about classes)",
    "type": "a `type` declaration", "trace": "`trace`",
}
_TWO_CHAR = {":=": ":=", "==": "==", "<=": "<=", ">=": ">=", "!=": "!=", "?=": "?="}
_ONE_CHAR = set(":=<>!|,[]{}().;*/+-")
_COMPARISONS = {"==", "!=", "<=", ">=", "<", ">"}
_ALLOWED_SPACE = {" ", "\n", "\r", "\t"}


@dataclass(frozen=True, slots=True)
class Violation:
    """One construct outside the safe subset, where it stands."""

    file: str
    line: int
    column: int
    construct: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.construct}"


class UnsafePolicy(Exception):
    """The policy text is outside the safe subset; `violations` say where and what."""

    def __init__(self, violations: list[Violation]) -> None:
        first = violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(f"{first}{more}")
        self.violations = violations


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "name", "string", "number", "bool", a keyword, or the operator itself
    text: str
    offset: int


class ShapeBroken(UnsafePolicy):
    """Rules the decision reaches use a field as its kind does not allow (the shape
    invariants of the decision cache); `violations` say where and what."""


# What an operand is, as far as the text tells: ("field", name), ("string", value),
# ("number" | "bool" | "list" | "empty" | "dict", ""), ("var", name), ("call", rule) or
# ("expr", operator).
_Value = tuple[str, str]
_CONSTANTS = {"string", "number", "bool", "list", "empty", "dict"}
_ARITHMETIC = {"+", "-", "*", "/", "mod", "rem"}
_ORDER = {"<", "<=", ">", ">="}
_NOUNS = {NOW: "time", TIMESTAMP: "timestamp", ID: "id", CODE: "municipality code",
          ID_LIST: "id list", CODE_LIST: "list of municipality codes",
          UNORDERED: "list of relationships"}


@dataclass(slots=True)
class _RuleUse:
    """What one rule does that the shape invariants care about: whom it calls, where it
    misuses a field, the constant strings of its head, the ids it passes to rules."""

    name: str
    calls: set[str]
    findings: list[tuple[int, str]]
    head_constants: dict[int, str]
    passed_ids: list[tuple[str, int, str, int]]  # (rule called, position, field, offset)
    # strings compared with a variable or a rule's result: what an id may be tested
    # against out of the text's sight (pdp.engine.shape_check puts them in its records)
    compared: set[str] = dataclass_field(default_factory=set)
    # the fields it looks up (`x.field`), and where it could see an input whole (a
    # dictionary written out, `in` over something other than a field or a list): what
    # a staged decision may leave out of a stage's record (`stage_plan`)
    fields: set[str] = dataclass_field(default_factory=set)
    whole: list[tuple[int, str]] = dataclass_field(default_factory=list)
    # its tokens, from the head to the `;` (the form of `decision`, `stage_plan`)
    tokens: tuple[str, ...] = ()


def _kind(value: _Value) -> str | None:
    return KINDS.get(value[1]) if value[0] == "field" else None


def _shown(value: _Value) -> str:
    what, text = value
    if what == "field":
        return f"`.{text}`"
    if what == "string":
        return f'the constant "{text}"'
    return {"number": "a constant number", "bool": "a constant boolean",
            "list": "a constant list", "empty": "[]", "dict": "a constant dictionary",
            "var": f"`{text}`", "call": f"`{text}(...)`"}.get(what, "an expression")


def _misuse(operator: str, left: _Value, right: _Value) -> str | None:
    """Why `left operator right` breaks a shape invariant, as far as the text shows
    (a variable or a rule's result may hold anything: the property check in
    pdp.engine.shape_check looks at what the text cannot tell), or None."""
    if operator in _ARITHMETIC:
        for value in (left, right):
            kind = _kind(value)
            if kind in (NOW, TIMESTAMP, ID, CODE):
                return (f"the {_NOUNS[kind]} {_shown(value)} in arithmetic (`{operator}`): "
                        f"{_WHY[kind]}")
        return None
    if operator == "in":
        return _misused_in(left, right)
    return _misused_comparison(operator, left, right) or _misused_comparison(
        operator, right, left)


_WHY = {
    NOW: "the time is only compared (<, <=) with timestamps of the input",
    TIMESTAMP: "a timestamp is only compared (<, <=) with r.now, never with another "
               "timestamp or a constant, and never computed with",
    ID: 'an id is only tested for equality or membership, never with a constant but ""',
    CODE: 'a municipality code is only tested for equality or membership, never with a '
          'constant but ""',
    ID_LIST: "an id list is only searched for the record's own ids (never a constant) or "
             "tested for being []",
    CODE_LIST: "a list of codes is only searched for the record's own codes (never a "
               "constant), in any order",
    UNORDERED: "only the relationships with the user's municipality for the purpose "
               "asked may be read: take them one by one with `in`",
}


def _misused_in(item: _Value, items: _Value) -> str | None:
    kind, listed = _kind(item), _kind(items)
    if listed in (ID_LIST, CODE_LIST, UNORDERED) and (
            item[0] in _CONSTANTS and item != ("string", "")):
        return f"{_shown(item)} looked for in {_shown(items)}: {_WHY[listed]}"
    if kind in (NOW, TIMESTAMP, ID, CODE) and items[0] == "list":
        return f"the {_NOUNS[kind]} {_shown(item)} looked for in a constant list: {_WHY[kind]}"
    return None


def _misused_comparison(operator: str, value: _Value, other: _Value) -> str | None:
    """`value operator other` from value's side: only its kind's rule is checked."""
    kind, other_kind = _kind(value), _kind(other)
    if kind is None or other[0] in ("var", "call", "expr"):
        return None  # what a variable holds the text does not tell
    constant = other[0] in _CONSTANTS
    what = f"the {_NOUNS.get(kind, kind)} {_shown(value)} compared with {_shown(other)}"
    if kind in (NOW, TIMESTAMP):
        if constant or other_kind not in (NOW, TIMESTAMP):
            return f"{what}: {_WHY[kind]}"
        if kind == other_kind == TIMESTAMP:
            return f"{what}: {_WHY[TIMESTAMP]}"
        if operator not in _ORDER and kind != other_kind:
            return f"{what} by `{operator}`: {_WHY[TIMESTAMP]}"
        return None
    if kind in (ID, CODE):
        if operator in _ORDER:
            return f"{what} by `{operator}`: {_WHY[kind]}"
        if constant and other != ("string", ""):
            return f"{what}: {_WHY[kind]}"
        return None
    if kind in (ID_LIST, CODE_LIST):
        if operator in _ORDER or (constant and other[0] != "empty") or other_kind is not None:
            return f"{what}: {_WHY[kind]}"
        return None
    if kind == UNORDERED:
        return f"{what}: {_WHY[UNORDERED]}"
    return None


class _Refused(Exception):
    def __init__(self, offset: int, construct: str) -> None:
        super().__init__(construct)
        self.offset = offset
        self.construct = construct


def _character_problem(char: str) -> str | None:
    """Why `char` may stand nowhere in a policy, or None."""
    if char in _ALLOWED_SPACE:
        return None
    category = unicodedata.category(char)
    if category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or (
            category == "Zs" and char != " "):
        name = unicodedata.name(char, "unnamed")
        return f"a control, format or invisible character U+{ord(char):04X} ({name})"
    return None


_DIGITS = "0123456789"


def _digits(text: str, i: int) -> int:
    while i < len(text) and text[i] in _DIGITS:
        i += 1
    return i


def _tokens(text: str) -> list[_Token]:
    """oso's lexer, restricted: ASCII outside strings and comments."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in _ALLOWED_SPACE:
            i += 1
        elif char == "#":  # a comment runs to \r or \n, exactly as oso's lexer has it
            while i < n and text[i] not in "\r\n":
                i += 1
        elif char == '"':
            start = i
            i += 1
            value = []
            while True:
                if i >= n or text[i] == "\n":
                    raise _Refused(start, "an unterminated string")
                if text[i] == '"':
                    i += 1
                    break
                if text[i] == "\\":
                    i += 1
                    if i >= n:
                        raise _Refused(start, "an unterminated string")
                    value.append({"n": "\n", "r": "\r", "t": "\t", "0": "\0"}.get(text[i], text[i]))
                else:
                    value.append(text[i])
                i += 1
            tokens.append(_Token("string", "".join(value), start))
        elif not char.isascii():
            raise _Refused(i, f"a non-ASCII character {char!r} outside a string or comment")
        elif char in _DIGITS:
            start = i
            i = _digits(text, i)
            if i < n and text[i] == ".":
                i = _digits(text, i + 1)
            if i < n and text[i] in "eE":
                i = _digits(text, i + 1)
                if i < n and text[i] in "+-":
                    i += 1
                i = _digits(text, i)
            tokens.append(_Token("number", text[start:i], start))
        elif char == "_" or char.isalpha():
            start = i
            while i < n:
                if text[i] == "_" or (text[i].isascii() and text[i].isalnum()):
                    i += 1
                elif text[i:i + 2] == "::":  # oso reads Module::Name as one symbol
                    i += 2
                elif text[i] == "?":  # and allows one ? at the end of a symbol
                    i += 1
                    break
                else:
                    break
            word = text[start:i]
            if i < n and not text[i].isascii():
                # oso's symbols go on through any non-ASCII character: a look-alike letter.
                raise _Refused(i, f"a non-ASCII character {text[i]!r} in a name")
            kind = _KEYWORDS.get(word, "name")
            if kind in _REFUSED_KEYWORDS:
                raise _Refused(start, _REFUSED_KEYWORDS[kind])
            tokens.append(_Token(kind, word, start))
        elif text[i:i + 2] in _TWO_CHAR:
            tokens.append(_Token(text[i:i + 2], text[i:i + 2], i))
            i += 2
        elif char in _ONE_CHAR and char not in "!":
            tokens.append(_Token(char, char, i))
            i += 1
        else:
            raise _Refused(i, f"the character {char!r}, which Polar does not use here")
        if len(tokens) > MAX_TOKENS:
            raise _Refused(i, f"more than {MAX_TOKENS} tokens")
    return tokens


class _Parser:
    """Recursive descent over the safe subset of polar.lalrpop (see module doc).

    Each parse method returns the depth of the term oso would build for what it read:
    oso nests a chain of one operator (`a + b + c`, `r.x.y`) one level per operand and
    walks terms recursively, so a deep term can overflow its stack and end the process.
    `MAX_TERM_DEPTH` bounds that; `MAX_NESTING` bounds brackets, calls and `not` (and so
    this parser's own recursion)."""

    def __init__(self, tokens: list[_Token], end: int) -> None:
        self.tokens = tokens
        self.i = 0
        self.end = end
        self.nesting = 0
        self.last: _Value = ("expr", "")
        self.rules: list[_RuleUse] = []
        self.current = _RuleUse("", set(), [], {}, [])

    # -- helpers ---------------------------------------------------------------------------

    def peek(self, ahead: int = 0) -> _Token | None:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else None

    def at(self, *kinds: str) -> bool:
        token = self.peek()
        return token is not None and token.kind in kinds

    def offset(self) -> int:
        token = self.peek()
        return token.offset if token is not None else self.end

    def take(self, kind: str, what: str | None = None) -> _Token:
        token = self.peek()
        if token is None or token.kind != kind:
            found = "the end of the file" if token is None else repr(token.text)
            raise _Refused(self.offset(), f"{what or repr(kind)} expected, found {found}")
        self.i += 1
        return token

    def name(self, token: _Token, role: str) -> None:
        if "__" in token.text:
            raise _Refused(token.offset, f"the name {token.text!r} (no `__` in names)")
        if not _NAME.match(token.text):
            raise _Refused(token.offset, f"the {role} {token.text!r} (names start with a "
                                         f"small letter or _, and hold letters, digits, _)")

    def deeper(self, depth: int, offset: int) -> int:
        if depth > MAX_TERM_DEPTH:
            raise _Refused(offset, f"an expression nested or chained deeper than "
                                   f"{MAX_TERM_DEPTH} (split it into rules)")
        return depth

    def enter(self) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise _Refused(self.offset(), f"brackets, calls or `not` nested deeper than "
                                          f"{MAX_NESTING}")

    def leave(self) -> None:
        self.nesting -= 1

    def chain(self, operand: Callable[[], int], *operators: str) -> int:
        """A left-associative chain of one precedence level: one level per operand."""
        start = self.offset()
        depth = operand()
        while self.at(*operators):
            operator = self.tokens[self.i].text
            self.i += 1
            left = self.last
            depth = self.deeper(max(depth, operand()) + 1, start)
            if operator == "in" and self.last[0] not in ("field", "list", "empty"):
                self.current.whole.append((start, "`in` over something other than a "
                                                  "field or a list written out"))
            problem = _misuse(operator, left, self.last)
            if problem is not None:
                self.current.findings.append((start, problem))
            for one, other in ((left, self.last), (self.last, left)):
                if one[0] == "string" and one[1] and other[0] in ("var", "call"):
                    self.current.compared.add(one[1])
            both_numbers = left[0] == self.last[0] == "number"
            self.last = ("number", "") if both_numbers and operator in _ARITHMETIC else (
                "expr", operator)
        return depth

    # -- lines -----------------------------------------------------------------------------

    def lines(self) -> None:
        while self.peek() is not None:
            self.rule()

    def rule(self) -> None:
        token = self.peek()
        assert token is not None
        if token.kind == "?=":
            raise _Refused(token.offset, "an inline query `?=` (it runs when loaded)")
        head = self.take("name", "a rule name")
        self.name(head, "rule name")
        if not self.at("("):
            raise _Refused(self.offset(), "a resource block or declaration "
                                          "(only rules are allowed)")
        self.take("(")
        first = self.i - 2
        self.current = _RuleUse(head.text, set(), [], {}, [])
        self.rules.append(self.current)
        if not self.at(")"):
            self.parameter(0)
            position = 1
            while self.at(","):
                self.take(",")
                self.parameter(position)
                position += 1
        self.take(")", "')'")
        if self.at("if"):
            self.take("if")
            self.expression()
        elif self.at(":="):
            raise _Refused(self.offset(), "`:=` after a rule head (write `if`)")
        self.take(";", "';' at the end of the rule")
        self.current.tokens = tuple(token.text for token in self.tokens[first:self.i])

    def parameter(self, position: int) -> None:
        self.additive()
        if self.last[0] == "string" and self.last[1]:
            self.current.head_constants[position] = self.last[1]
        if self.at(":"):
            raise _Refused(self.offset(), "a specializer `x: Type` (it asks the host "
                                          "about classes)")

    # -- expressions, loosest first (polar.lalrpop Exp1 ... Exp10) -------------------------
    # oso makes `and` and `or` chains one flat term; the others nest per operand.

    def expression(self) -> int:  # or
        start = self.offset()
        depth = self.conjunction()
        while self.at("or"):
            self.take("or")
            depth = max(depth, self.conjunction())
            self.last = ("expr", "or")
        return self.deeper(depth + 1, start)

    def conjunction(self) -> int:  # and
        start = self.offset()
        depth = self.negation()
        while self.at("and"):
            self.take("and")
            depth = max(depth, self.negation())
            self.last = ("expr", "and")
        return self.deeper(depth + 1, start)

    def negation(self) -> int:  # not
        if self.at("not"):
            start = self.take("not").offset
            self.enter()
            depth = self.negation()
            self.leave()
            self.last = ("expr", "not")
            return self.deeper(depth + 1, start)
        return self.unification()

    def unification(self) -> int:  # = and :=
        return self.chain(self.comparison, "=", ":=")

    def comparison(self) -> int:
        return self.chain(self.additive, *_COMPARISONS)

    def additive(self) -> int:
        return self.chain(self.multiplicative, "+", "-")

    def multiplicative(self) -> int:
        return self.chain(self.membership, "*", "/", "mod", "rem")

    def membership(self) -> int:  # in
        return self.chain(self.lookup, "in")

    def lookup(self) -> int:  # x.field
        start = self.offset()
        depth = self.primary()
        while self.at("."):
            dot = self.take(".")
            field = self.peek()
            if field is None or field.kind != "name":
                what = "(...)" if field is not None and field.kind == "(" else (
                    "" if field is None else field.text)
                raise _Refused(dot.offset, f"the dynamic or keyword lookup `.{what}` (a "
                                           f"policy reads only `.field` of its input)")
            self.i += 1
            if self.at("("):
                raise _Refused(field.offset, f"the method call `.{field.text}(...)`")
            if field.text not in FIELDS:
                raise _Refused(field.offset, f"the attribute `.{field.text}` (a policy reads "
                                             f"only the fields of its input)")
            self.last = ("field", field.text)
            self.current.fields.add(field.text)
            depth = self.deeper(depth + 1, start)
        return depth

    def primary(self) -> int:
        token = self.peek()
        if token is None:
            raise _Refused(self.end, "an expression expected, found the end of the file")
        kind = token.kind
        if kind in ("string", "number", "bool", "cut"):
            self.i += 1
            self.last = (kind, token.text if kind == "string" else "")
            return 1
        if kind in ("+", "-"):
            following = self.peek(1)
            if following is None or following.kind != "number":
                raise _Refused(token.offset, f"{kind!r} where a value is expected")
            self.i += 2
            self.last = ("number", "")
            return 1
        if kind == "name":
            self.i += 1
            self.name(token, "name")
            if self.at("("):
                self.current.calls.add(token.text)
                depth = self.deeper(self.arguments(token.text) + 1, token.offset)
                self.last = ("call", token.text)
                return depth
            if self.at("{"):
                raise _Refused(token.offset, "an instance pattern `Name{...}`")
            self.last = ("var", token.text)
            return 1
        if kind == "forall":
            self.last = ("expr", "forall")
            self.i += 1
            self.take("(", "'(' after forall")
            self.enter()
            depth = self.expression()
            self.take(",", "',' in forall")
            depth = max(depth, self.expression())
            self.take(")", "')'")
            self.leave()
            self.last = ("expr", "forall")
            return self.deeper(depth + 1, token.offset)
        if kind == "(":
            self.i += 1
            self.enter()
            depth = self.expression()
            self.take(")", "')'")
            self.leave()
            return depth
        if kind in ("[", "{"):
            return self.constant()
        if kind in (".", "in"):
            raise _Refused(token.offset, f"the operator form `{token.text}(...)`")
        raise _Refused(token.offset, f"{token.text!r} where a value is expected")

    def arguments(self, rule: str) -> int:
        self.take("(")
        self.enter()
        depth = 0
        if not self.at(")"):
            depth = self.argument(rule, 0)
            position = 1
            while self.at(","):
                self.take(",")
                if self.at(")"):
                    break
                depth = max(depth, self.argument(rule, position))
                position += 1
        self.take(")", "')' after the arguments")
        self.leave()
        return depth

    def argument(self, rule: str, position: int) -> int:
        if self.at("name") and (following := self.peek(1)) is not None and following.kind == ":":
            raise _Refused(self.offset(), "a keyword argument `name: value`")
        start = self.offset()
        depth = self.expression()
        if self.last[0] == "field" and KINDS.get(self.last[1]) in (ID, CODE):
            self.current.passed_ids.append((rule, position, self.last[1], start))
        return depth

    # -- lists and dictionaries: constants only ---------------------------------------------
    # A list or dictionary holding a variable builds a new term at each use; rules that
    # call themselves could then double a term at each step until memory runs out. The
    # service's inputs bring every list a policy needs, so a policy writes only constant
    # ones (`["revoked", "expired"]`, `[]`).

    def constant(self) -> int:
        token = self.peek()
        assert token is not None
        if token.kind in ("string", "number", "bool"):
            self.i += 1
            self.last = (token.kind, token.text if token.kind == "string" else "")
            return 1
        if token.kind in ("+", "-") and (following := self.peek(1)) is not None and (
                following.kind == "number"):
            self.i += 2
            self.last = ("number", "")
            return 1
        if token.kind == "[":
            self.take("[")
            self.enter()
            depth = 0
            while not self.at("]"):
                depth = max(depth, self.constant())
                if not self.at(","):
                    break
                self.take(",")
            self.take("]", "']'")
            self.leave()
            self.last = ("list", "") if depth else ("empty", "")
            return self.deeper(depth + 1, token.offset)
        if token.kind == "{":
            self.take("{")
            self.enter()
            depth = 0
            keys: set[str] = set()
            while not self.at("}"):
                key = self.take("name", "a field name")
                self.name(key, "field name")
                if key.text in keys:
                    raise _Refused(key.offset, f"the field {key.text!r} twice")
                keys.add(key.text)
                self.take(":", "':' and a constant value (a dictionary holds constants only)")
                depth = max(depth, self.constant())
                if not self.at(","):
                    break
                self.take(",")
            self.take("}", "'}'")
            self.leave()
            self.current.whole.append((token.offset, "a dictionary written out"))
            self.last = ("dict", "")
            return self.deeper(depth + 1, token.offset)
        what = "a rest variable `*x`" if token.kind == "*" else repr(token.text)
        raise _Refused(token.offset, f"{what} in a list or dictionary (they hold constants "
                                     f"only: strings, numbers, booleans, lists of them)")


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column, lines split as oso's lexer splits them (at \\n)."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _read(file: str, text: str) -> tuple[list[Violation], list[_RuleUse]]:
    """The first construct of one policy file outside the safe subset (after a refusal
    the rest of the file cannot be read reliably), or the rules it holds."""
    def at(offset: int, construct: str) -> tuple[list[Violation], list[_RuleUse]]:
        line, column = _position(text, offset)
        return [Violation(file, line, column, construct)], []

    if len(text) > MAX_SOURCE_CHARS:
        return at(0, f"a file larger than {MAX_SOURCE_CHARS} characters")
    for offset, char in enumerate(text):
        problem = _character_problem(char)
        if problem is not None:
            return at(offset, problem)
    try:
        parser = _Parser(_tokens(text), len(text))
        parser.lines()
    except _Refused as refused:
        return at(refused.offset, refused.construct)
    except RecursionError:  # MAX_NESTING keeps well below it; fail closed all the same
        return at(0, "an expression nested too deeply to read")
    return [], parser.rules


def violations_in(file: str, text: str) -> list[Violation]:
    """The constructs of one policy file outside the safe subset (the first per file)."""
    return _read(file, text)[0]


def _reached(rules: Iterable[_RuleUse], entry: str) -> set[str]:
    calls: dict[str, set[str]] = {}
    for rule in rules:
        calls.setdefault(rule.name, set()).update(rule.calls)
    reached, todo = {entry}, [entry]
    while todo:
        for name in calls.get(todo.pop(), set()) - reached:
            reached.add(name)
            todo.append(name)
    return reached


def shape_violations(files: Iterable[tuple[str, str, list[_RuleUse]]],
                     entry: str = "decision") -> list[Violation]:
    """Where the rules `entry` reaches use a field of the decision record as its kind
    (pdp.model.policy_schema.KINDS) does not allow: the invariants the decision cache
    relies on (the header of policies/rules.polar). Rules it does not reach (those of
    a right applied for, of a change) read other inputs and are not looked at."""
    read = list(files)
    reached = _reached((rule for _, _, rules in read for rule in rules), entry)
    constants = {(rule.name, position): value for _, _, rules in read for rule in rules
                 for position, value in rule.head_constants.items()}
    found: list[Violation] = []
    for file, text, rules in read:
        for rule in rules:
            if rule.name not in reached:
                continue
            problems = list(rule.findings)
            for called, position, field, offset in rule.passed_ids:
                if (called, position) in constants:
                    kind = KINDS[field]
                    problems.append((offset, (
                        f"the {_NOUNS[kind]} `.{field}` given to `{called}`, which has a "
                        f"rule for the constant \"{constants[called, position]}\" there: "
                        f"{_WHY[kind]}")))
            for offset, problem in problems:
                line, column = _position(text, offset)
                found.append(Violation(file, line, column, problem))
    return sorted(set(found), key=lambda v: (v.file, v.line, v.column, v.construct))


def compared_strings(sources: Mapping[str, str], entry: str = "decision") -> set[str]:
    """The strings that the rules `entry` reaches compare with a variable or a rule's
    result (`x = "c-1"`): an id or a code could meet them there, unseen by the kinds."""
    read = [(file, text, *_read(file, text)) for file, text in sources.items()]
    rules = [rule for _, _, _, found in read for rule in found]
    reached = _reached(rules, entry)
    return {s for rule in rules if rule.name in reached for s in rule.compared}


def vet_sources(sources: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
    """Raise UnsafePolicy unless every (file name, text) is inside the safe subset, and
    ShapeBroken (an UnsafePolicy) if the rules of a decision break the shape invariants."""
    items = sources.items() if isinstance(sources, Mapping) else sources
    read = [(file, text, *_read(file, text)) for file, text in items]
    found = [v for _, _, violations, _ in read for v in violations]
    if found:
        raise UnsafePolicy(found)
    broken = shape_violations((file, text, rules) for file, text, _, rules in read)
    if broken:
        raise ShapeBroken(broken)


# -- a decision in two stages ---------------------------------------------------------------
# A `decision` written in exactly this form (as policies/rules.polar writes it) is the
# first answer of `failing` for every category and action, or else every answer of
# `category_outcome`: the service may ask the two apart, each about a record holding only
# the fields its rules read, and keep each answer by the shape of that smaller record
# (pdp.engine.decider). Any other form of `decision` is asked whole.
GATE_RULE = "failing"
TABLE_RULE = "category_outcome"
STAGED_DECISION = (
    'decision(r, _category, _action, reason, "") if failing(r, reason) and cut;',
    "decision(r, category, action, reason, grant) if "
    "category_outcome(r, category, action, reason, grant);",
)


@dataclass(frozen=True, slots=True)
class StagePlan:
    """How to ask a `decision` of the staged form: the fields each stage's rules read
    (of the decision record, of a grant, of a relationship; one name space)."""

    gate_fields: frozenset[str]
    table_fields: frozenset[str]


def _fields_of(rules: list[_RuleUse], entry: str) -> tuple[frozenset[str], list[str]]:
    """The fields the rules `entry` reaches look up, and where they could see an input
    whole (then a record narrowed to those fields could be answered differently)."""
    reached = _reached(rules, entry)
    fields: set[str] = set()
    whole: list[str] = []
    for rule in rules:
        if rule.name in reached:
            fields |= rule.fields
            whole += [f"{rule.name}: {what}" for _, what in rule.whole]
    return frozenset(fields), whole


def stage_plan(sources: Mapping[str, str]) -> tuple[StagePlan | None, str]:
    """The plan for asking this policy's `decision` in two stages, or None and why not
    (the policy is then asked whole, as always correct). Assumes `vet_sources` passed."""
    rules = [rule for file, text in sorted(sources.items()) for rule in _read(file, text)[1]]
    clauses = [rule.tokens for rule in rules if rule.name == "decision"]
    expected = [tuple(token.text for token in _tokens(clause)) for clause in STAGED_DECISION]
    if clauses != expected:
        return None, "`decision` is not written in the staged form"
    gate, gate_whole = _fields_of(rules, GATE_RULE)
    table, table_whole = _fields_of(rules, TABLE_RULE)
    if gate_whole or table_whole:
        return None, f"a stage's rules could see the record whole ({(gate_whole + table_whole)[0]})"
    return StagePlan(gate, table), ""
