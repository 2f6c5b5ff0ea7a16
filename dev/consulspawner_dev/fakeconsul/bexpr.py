"""Binding-rule selectors: the subset of go-bexpr that Consul evaluates over a login's claims.

Consul compiles a selector with ``bexpr.CreateEvaluatorForType(selector, nil, fields)`` where
``fields`` is ``ssoauth.fieldDetails`` (``agent/consul/authmethod/ssoauth/sso.go``): a map of
strings under the tag ``value`` and a map of string lists under ``list``. A binding rule whose
selector does not compile is refused at write time (``ACL.BindingRuleSet``); at login a selector
that fails to compile or to evaluate simply does not match (``agent/consul/auth/binder.go``
``doesSelectorMatch``).

Grammar and semantics follow hashicorp/go-bexpr (``grammar/grammar.peg``, ``evaluate.go``):
``or`` binds looser than ``and``, ``not`` and parentheses group; match operators are ``==``,
``!=``, ``in``, ``not in``, ``contains``, ``not contains``, ``is empty``, ``is not empty``,
``matches``, ``not matches``. Values are double-quoted (with escapes), backquoted (raw) or bare
words/numbers. ``in`` on a string is a substring test, on a list an element test, on a map a key
test; ``==`` on a list or map is an evaluation error (no primitive equality), so no match. A
selector naming a key that is absent from the map is an evaluation error (pointerstructure
``ErrNotFound``), so no match either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class SelectorError(ValueError):
    """A selector go-bexpr would refuse to compile, or an evaluation error."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lp>\() | (?P<rp>\)) |
        (?P<op>==|!=) |
        (?P<dq>"(?:[^"\\]|\\.)*") |
        (?P<bq>`[^`]*`) |
        (?P<word>[A-Za-z0-9_\-.:/]+)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "contains", "is", "empty", "matches"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass
class _Match:
    selector: list[str]
    op: str  # ==, !=, in, not in, is empty, is not empty, matches, not matches
    value: str | None


@dataclass
class _Bool:
    op: str  # and, or, not
    args: list


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"1:{pos + 1}: syntax error near {text[pos : pos + 10]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def word(self, value: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok[0] == "word" and tok[1] == value

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise SelectorError("unexpected end of selector")
        self.i += 1
        return tok

    def parse(self):
        if not self.toks:
            raise SelectorError("empty selector")
        node = self.or_expr()
        if self.peek() is not None:
            raise SelectorError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return node

    def or_expr(self):
        args = [self.and_expr()]
        while self.word("or"):
            self.take()
            args.append(self.and_expr())
        return args[0] if len(args) == 1 else _Bool("or", args)

    def and_expr(self):
        args = [self.unary()]
        while self.word("and"):
            self.take()
            args.append(self.unary())
        return args[0] if len(args) == 1 else _Bool("and", args)

    def unary(self):
        if self.word("not"):
            self.take()
            return _Bool("not", [self.unary()])
        if self.peek() and self.peek()[0] == "lp":  # type: ignore[index]
            self.take()
            node = self.or_expr()
            if not self.peek() or self.take()[0] != "rp":
                raise SelectorError("missing closing parenthesis")
            return node
        return self.match()

    def value(self) -> str:
        kind, text = self.take()
        if kind == "dq":
            return bytes(text[1:-1], "utf-8").decode("unicode_escape")
        if kind == "bq":
            return text[1:-1]
        if kind == "word" and text not in _KEYWORDS:
            return text
        raise SelectorError(f"expected a value, found {text!r}")

    def selector(self) -> list[str]:
        kind, text = self.take()
        if kind != "word" or text in _KEYWORDS:
            raise SelectorError(f"expected a selector, found {text!r}")
        parts = text.split(".")
        if not all(_IDENT.match(p) for p in parts):
            raise SelectorError(f"invalid selector {text!r}")
        return parts

    def match(self):
        # "<value> in <selector>" / "<value> not in <selector>"
        if self.word("in", 1) or (self.word("not", 1) and self.word("in", 2)):
            value = self.value()
            op = "in" if self.word("in") else "not in"
            self.take()
            if op == "not in":
                self.take()
            return _Match(self.selector(), op, value)
        sel = self.selector()
        tok = self.peek()
        if tok and tok[0] == "op":
            self.take()
            return _Match(sel, tok[1], self.value())
        if self.word("is"):
            self.take()
            negate = self.word("not") and bool(self.take())
            if not self.word("empty"):
                raise SelectorError("expected 'empty'")
            self.take()
            return _Match(sel, "is not empty" if negate else "is empty", None)
        negate = self.word("not") and bool(self.take())
        if self.word("contains"):
            self.take()
            return _Match(sel, "not in" if negate else "in", self.value())
        if self.word("matches"):
            self.take()
            return _Match(sel, "not matches" if negate else "matches", self.value())
        raise SelectorError(f"expected a match operator after {'.'.join(sel)!r}")


# go-bexpr field_config.go for ssoauth.fieldDetails: the two maps take key tests; a map's string
# element takes equality, containment and regexps; a []string element containment and emptiness.
_MAP_OPS = {"is empty", "is not empty", "in", "not in"}
_OPS = {
    "value": {"==", "!=", "in", "not in", "matches", "not matches"},
    "list": {"in", "not in", "is empty", "is not empty"},
}
_OP_NAMES = {
    "==": "Equal",
    "!=": "Not Equal",
    "in": "In",
    "not in": "Not In",
    "is empty": "Is Empty",
    "is not empty": "Is Not Empty",
    "matches": "Matches",
    "not matches": "Not Matches",
}


def _check_fields(node) -> None:
    """CreateEvaluatorForType (validate.go): each selector names a field of ssoauth.fieldDetails
    and uses an operator that field supports."""
    if isinstance(node, _Bool):
        for arg in node.args:
            _check_fields(arg)
        return
    head, path = node.selector[0], ".".join(node.selector)
    if head not in ("value", "list") or len(node.selector) > 2:
        raise SelectorError(f'Selector "{path}" is not valid')
    allowed = _MAP_OPS if len(node.selector) == 1 else _OPS[head]
    if node.op not in allowed:
        raise SelectorError(f'Invalid match operator "{_OP_NAMES[node.op]}" for selector "{path}"')
    if node.op in ("matches", "not matches"):
        try:
            re.compile(node.value or "")
        except re.error as err:
            raise SelectorError(f"Failed to compile regular expression {node.value!r}: {err}") from None


def compile_selector(text: str):
    """Parse and field-check a selector; raises :class:`SelectorError` as go-bexpr would."""
    node = _Parser(text).parse()
    _check_fields(node)
    return node


def _lookup(datum: dict, parts: list[str]):
    value = datum
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            raise SelectorError(f"error finding value in datum: /{'/'.join(parts)} not found")
        value = value[part]
    return value


def _eval(node, datum: dict) -> bool:
    if isinstance(node, _Bool):
        if node.op == "not":
            return not _eval(node.args[0], datum)
        if node.op == "and":
            return all(_eval(a, datum) for a in node.args)
        return any(_eval(a, datum) for a in node.args)
    value = _lookup(datum, node.selector)
    op = node.op
    if op in ("==", "!="):
        if not isinstance(value, str):
            raise SelectorError("unable to find suitable primitive comparison function for matching")
        return (value == node.value) == (op == "==")
    if op in ("in", "not in"):
        if isinstance(value, str):
            found = (node.value or "") in value
        elif isinstance(value, (list, dict)):
            found = node.value in value
        else:
            raise SelectorError("Cannot perform in/contains operations")
        return found == (op == "in")
    if op in ("is empty", "is not empty"):
        return (len(value or "") == 0) == (op == "is empty")
    if not isinstance(value, str):
        raise SelectorError("Value is not convertible to []byte")
    return bool(re.search(node.value or "", value)) == (op == "matches")


def selector_matches(text: str, datum: dict) -> bool:
    """binder.go doesSelectorMatch: empty matches all; compile or evaluation errors match nothing."""
    if not text:
        return True
    try:
        return _eval(compile_selector(text), datum)
    except SelectorError:
        return False
