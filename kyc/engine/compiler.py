"""Compile rule conditions into one Python function per rule set.

A condition is written in a small, Python-like language (docs/rules.md). It is parsed with
`ast`, every node is checked against a whitelist and the signal schema, and then re-emitted
as source text that this module writes itself: only generated local names, whitelisted helper
calls and literal constants (via repr) reach `compile`, so a rule cannot name anything the
language does not offer (`__class__`, `__import__`, attributes of objects).

All conditions of a rule set become one function, so a full evaluation costs one call, with
every signal read once into a local variable.

Whatever compiles evaluates, on any signals, within a fixed time: numbers are finite and within
±10^15, a condition is at most MAX_CONDITION_LENGTH characters and MAX_DEPTH levels deep, and
regexes run on RE2 (linear time, no backtracking) over at most MAX_MATCH_INPUT characters; a
pattern RE2 cannot compile is refused at load.

A missing signal (None) never makes a condition true: a comparison (arithmetic included) that
reads a missing field is false, helper calls on a missing value are false, and `not (...)` over
a missing field is false too. A division by zero makes its rule not fire.
"""

from __future__ import annotations

import ast
import io
import keyword
import math
import re
import threading
import tokenize
from dataclasses import dataclass, field
from typing import Any, Callable

import re2

from kyc.engine.schema import Schema

NUMBER = ("int", "float")
MAX_REGEX_LENGTH = 200
MAX_MATCH_INPUT = 512
MAX_CONDITION_LENGTH = 4000
MAX_DEPTH = 40                 # nesting of the parsed condition; Python's own recursion stays far away
MAX_NUMBER = 10**15


class ConditionError(Exception):
    """A condition that does not compile; carries what the loader needs to point at it."""

    def __init__(self, message: str, suggestion: str | None = None, offset: int = 0):
        super().__init__(message)
        self.message = message
        self.suggestion = suggestion
        self.offset = offset          # line offset inside a multi-line condition


# --- helper functions rules may call ----------------------------------------------------------

def _startswith(value, prefix):
    return value is not None and value.startswith(prefix)


def _endswith(value, suffix):
    return value is not None and value.endswith(suffix)


def _contains(value, part):
    return value is not None and part in value


def _matches(value, pattern):
    return value is not None and pattern.search(value[:MAX_MATCH_INPUT]) is not None


def _lower(value):
    return None if value is None else value.lower()


def _len(value):
    return None if value is None else len(value)


def _abs(value):
    return None if value is None else abs(value)


@dataclass(frozen=True)
class Function:
    impl: Callable
    args: tuple[str, ...]          # argument types; "regex" is a string literal compiled at load
    returns: str
    doc: str


FUNCTIONS: dict[str, Function] = {
    "startswith": Function(_startswith, ("str", "str"), "bool", "startswith(email.domain, \"mail.\")"),
    "endswith": Function(_endswith, ("str", "str"), "bool", "endswith(email.domain, \".ru\")"),
    "contains": Function(_contains, ("str", "str"), "bool", "contains(device.browser, \"Headless\")"),
    "matches": Function(_matches, ("str", "regex"), "bool", "matches(email.domain, \"^[a-z]{4}[0-9]{3}\\.com$\")"),
    "lower": Function(_lower, ("str",), "str", "lower(device.os) == \"linux\""),
    "len": Function(_len, ("str",), "int", "len(email.domain) > 20"),
    "abs": Function(_abs, ("number",), "number", "abs(velocity.ip_1h - velocity.device_1h) > 3"),
}

_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
        ast.In: "in", ast.NotIn: "not in"}
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Mod: "%"}
_BOOL_NAMES = {"true": True, "false": False, "True": True, "False": False}


@dataclass
class Expr:
    src: str
    type: str                      # bool | int | float | str | number | set:<type> | missing
    field: str | None = None       # set when the expression is a bare field read (may be None)
    nullable: bool = False         # may evaluate to None
    reads: tuple[str, ...] = ()    # locals of the fields this expression reads
    list_name: str | None = None   # set for lists.NAME


@dataclass
class CompileUnit:
    """Shared state while compiling every condition of one rule set into one function."""

    schema: Schema
    lists: dict[str, frozenset]
    field_locals: dict[str, str] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)

    def field_local(self, name: str) -> str:
        if name not in self.field_locals:
            self.field_locals[name] = f"_f{len(self.field_locals)}"
        return self.field_locals[name]

    def constant(self, value: Any, prefix: str) -> str:
        for key, existing in self.constants.items():
            if key.startswith(prefix) and existing is value:
                return key
        key = f"{prefix}{len(self.constants)}"
        self.constants[key] = value
        return key


def _type_name(t: str) -> str:
    return {"str": "text", "int": "number", "float": "number", "number": "number", "bool": "true/false"}.get(t, t)


def _is_number(t: str) -> bool:
    return t in NUMBER or t == "number"


def _compatible(a: str, b: str) -> bool:
    return a == b or (_is_number(a) and _is_number(b))


class _Compiler:
    def __init__(self, unit: CompileUnit, text: str):
        self.unit = unit
        self.text = text

    def fail(self, node: ast.AST | None, message: str, suggestion: str | None = None) -> ConditionError:
        offset = (getattr(node, "lineno", 1) or 1) - 1 if node is not None else 0
        return ConditionError(message, suggestion, offset)

    # Entry point: a condition must be true/false.
    def condition(self, node: ast.AST) -> str:
        expr = self.expr(node)
        if expr.type != "bool":
            raise self.fail(node, f"the condition is {_type_name(expr.type)}, not true/false",
                            "compare it, e.g. `... > 0` or `... == \"x\"`")
        return self.truth(expr)

    def truth(self, expr: Expr) -> str:
        # A bare boolean field is true only when the signal says True; missing is not true.
        return f"({expr.src} is True)" if expr.field else expr.src

    def expr(self, node: ast.AST) -> Expr:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise self.fail(node, f"{_describe(node)} is not part of the rule language",
                            "conditions use fields, constants, comparisons, and/or/not, + - * / %, in, "
                            "is missing and the functions in docs/rules.md")
        return method(node)

    def _Constant(self, node: ast.Constant) -> Expr:
        value = node.value
        if isinstance(value, bool):
            return Expr(repr(value), "bool")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                not (abs(value) <= MAX_NUMBER):          # an int compares exactly; inf and nan fail
            # 1e309 reads as infinity: refused like any number past the bound.
            raise self.fail(node, "number too large" if isinstance(value, int) or math.isfinite(value)
                            else "number too large: it reads as infinity",
                            "numbers in rules are finite and stay within ±10^15")
        if isinstance(value, int):
            return Expr(repr(value), "int")
        if isinstance(value, float):
            return Expr(repr(value), "float")
        if isinstance(value, str):
            return Expr(repr(value), "str")
        raise self.fail(node, f"constant {value!r} is not allowed", "use text in quotes, numbers, true or false")

    def _Name(self, node: ast.Name) -> Expr:
        if node.id in _BOOL_NAMES:
            return Expr(repr(_BOOL_NAMES[node.id]), "bool")
        if node.id == "missing":
            return Expr("None", "missing")
        suggestion = self.unit.schema.suggest(node.id) if "." not in node.id else None
        fams = ", ".join(self.unit.schema.families)
        raise self.fail(node, f"unknown name '{node.id}'",
                        f"did you mean {suggestion}?" if suggestion else f"fields are family.field; families: {fams}")

    def _Attribute(self, node: ast.Attribute) -> Expr:
        if not isinstance(node.value, ast.Name):
            raise self.fail(node, f"'{ast.unparse(node)}' is not a field",
                            "fields are family.field (see `kyc rules fields`); objects have no attributes here")
        family, key = node.value.id, node.attr
        if key.endswith(_KEYWORD_SUFFIX) and keyword.iskeyword(key[:-len(_KEYWORD_SUFFIX)]):
            key = key[:-len(_KEYWORD_SUFFIX)]
        name = f"{family}.{key}"
        if family == "lists":
            if key not in self.unit.lists:
                close = difflib_close(key, self.unit.lists.keys())
                raise self.fail(node, f"unknown list '{key}'",
                                f"did you mean lists.{close}?" if close else
                                f"lists are the files in rules/lists/: {', '.join(sorted(self.unit.lists)) or 'none'}")
            values = self.unit.lists[key]
            kind = getattr(values, "kind", None) or (
                "number" if values and all(isinstance(v, (int, float)) for v in values) else "text")
            elem = "int" if kind == "number" else "str"
            return Expr(self.unit.constant(values, "_L"), f"set:{elem}", list_name=key)
        if key.startswith("_") or family.startswith("_"):
            raise self.fail(node, f"'{name}' is not allowed: names starting with _ are never fields",
                            "fields are family.field (see `kyc rules fields`)")
        if name not in self.unit.schema:
            suggestion = self.unit.schema.suggest(name)
            raise self.fail(node, f"unknown field '{name}'", f"did you mean {suggestion}?" if suggestion else
                            f"`kyc rules fields` lists every field; families: {', '.join(self.unit.schema.families)}")
        f = self.unit.schema[name]
        local = self.unit.field_local(name)
        return Expr(local, f.type, field=name, nullable=True, reads=(local,))

    def _BoolOp(self, node: ast.BoolOp) -> Expr:
        op = " and " if isinstance(node.op, ast.And) else " or "
        parts, reads = [], []
        for value in node.values:
            e = self.expr(value)
            if e.type != "bool":
                raise self.fail(value, f"'{ast.unparse(value)}' is {_type_name(e.type)}, not true/false",
                                "compare it, e.g. `... > 0` or `... == \"x\"`")
            parts.append(self.truth(e))
            reads += e.reads
        return Expr("(" + op.join(parts) + ")", "bool", reads=_unique(reads))

    def _UnaryOp(self, node: ast.UnaryOp) -> Expr:
        operand = self.expr(node.operand)
        if isinstance(node.op, ast.Not):
            if operand.type != "bool":
                raise self.fail(node, f"'not' needs true/false, got {_type_name(operand.type)}",
                                "compare it first, e.g. `not (... > 0)`")
            if operand.field:
                return Expr(f"({operand.src} is False)", "bool", reads=operand.reads)
            # A missing signal never makes a condition true, negated or not: `not (x > 3)` is
            # false when x is missing, like `x <= 3`.
            guards = [f"{local} is not None" for local in operand.reads]
            return Expr("(" + " and ".join(guards + [f"not {operand.src}"]) + ")", "bool", reads=operand.reads)
        if isinstance(node.op, (ast.USub, ast.UAdd)) and _is_number(operand.type):
            sign = "-" if isinstance(node.op, ast.USub) else "+"
            return Expr(f"({sign}{operand.src})", operand.type, nullable=operand.nullable, reads=operand.reads)
        raise self.fail(node, f"operator '{ast.unparse(node)}' is not allowed here",
                        "'-' negates numbers; 'not' negates true/false")

    def _BinOp(self, node: ast.BinOp) -> Expr:
        if type(node.op) not in _ARITH:
            # No powers: 9 ** 9 ** 9 would take the process down computing it.
            hint = "powers are not part of the rule language" if isinstance(node.op, ast.Pow) \
                else "arithmetic is + - * / %"
            raise self.fail(node, f"operator in '{ast.unparse(node)}' is not allowed", hint)
        left, right = self.expr(node.left), self.expr(node.right)
        for side in (left, right):
            if not _is_number(side.type):
                raise self.fail(node, f"arithmetic needs numbers, got {_type_name(side.type)} in '{ast.unparse(node)}'",
                                "text is compared (==, in, startswith, matches), not added")
        result = "float" if "float" in (left.type, right.type) or isinstance(node.op, ast.Div) else "int"
        return Expr(f"({left.src} {_ARITH[type(node.op)]} {right.src})", result,
                    nullable=left.nullable or right.nullable, reads=_unique(left.reads + right.reads))

    def _Compare(self, node: ast.Compare) -> Expr:
        parts, reads = [], []
        left = self.expr(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = self.expr(right_node)
            parts.append(self._compare_pair(node, op, left, right))
            reads += left.reads + right.reads
            left = right
        return Expr("(" + " and ".join(parts) + ")", "bool", reads=_unique(reads))

    def _compare_pair(self, node: ast.Compare, op: ast.cmpop, left: Expr, right: Expr) -> str:
        if isinstance(op, (ast.Is, ast.IsNot)):
            if right.type != "missing":
                raise self.fail(node, "'is' is only used as 'is missing' / 'is not missing'",
                                "compare values with == and !=")
            if not left.field:
                raise self.fail(node, "'is missing' applies to a field", "e.g. device.form_fill_ms is missing")
            return f"({left.src} {'is' if isinstance(op, ast.Is) else 'is not'} None)"
        if left.type == "missing" or right.type == "missing":
            raise self.fail(node, "missing is not a value to compare with", "write 'field is missing'")
        sym = _CMP.get(type(op))
        if sym is None:
            raise self.fail(node, f"comparison {type(op).__name__} is not allowed", "use == != < <= > >= in")
        # Every field the comparison reads must be present, so `a + b > 6` is simply false when b
        # is missing (and `... or other` can still hold), instead of raising inside the rule.
        guards = [f"{local} is not None" for local in _unique(left.reads + right.reads)]
        if sym in ("in", "not in"):
            if not right.type.startswith("set:"):
                raise self.fail(node, "'in' needs a list on its right", "write [\"a\", \"b\"] or lists.name")
            elem = right.type[4:]
            values = self.unit.lists.get(right.list_name) if right.list_name else None
            text_values = getattr(values, "text_values", None)
            if left.type == "str" and elem == "int" and text_values is not None:
                # An undeclared all-digit list is both: numbers for number fields, text for text.
                right = Expr(self.unit.constant(text_values, "_L"), "set:str", list_name=right.list_name)
                elem, values = "str", None
            if not _compatible(left.type, elem):
                raise self.fail(node, f"'{ast.unparse(node)}' compares {_type_name(left.type)} with a list of "
                                      f"{_type_name(elem)}",
                                f"lists.{right.list_name} holds {_type_name(elem)}; declare '# kyc: text' or "
                                f"'# kyc: numbers' in its file" if right.list_name else
                                f"write the list's values as {_type_name(left.type)}")
            if getattr(values, "casefold", False) and left.type == "str":
                # The list was case-folded at load, as its file declares; fold the value to match.
                test = f"({left.src}.casefold() {sym} {right.src})"   # None.casefold(): no hit
                return "(" + " and ".join(guards + [test]) + ")"
        elif sym in ("==", "!="):
            if not _compatible(left.type, right.type):
                raise self.fail(node, f"'{ast.unparse(node)}' compares {_type_name(left.type)} with "
                                      f"{_type_name(right.type)}",
                                _clash_hint(left, right))
        else:
            ok = (_is_number(left.type) and _is_number(right.type)) or (left.type == right.type == "str")
            if not ok:
                raise self.fail(node, f"'{ast.unparse(node)}' orders {_type_name(left.type)} against "
                                      f"{_type_name(right.type)}",
                                _clash_hint(left, right) or
                                "ordering (<, >) works on numbers or on text compared with text")
        test = f"({left.src} {sym} {right.src})"
        return "(" + " and ".join(guards + [test]) + ")" if guards else test

    def _set_literal(self, node: ast.AST, elts: list[ast.AST]) -> Expr:
        values = []
        types = set()
        for elt in elts:
            if not isinstance(elt, ast.Constant) or isinstance(elt.value, bool) or \
                    not isinstance(elt.value, (str, int, float)):
                raise self.fail(node, "a list holds only text or number constants",
                                "for a long or shared list use a file in rules/lists/ and lists.NAME")
            values.append(elt.value)
            types.add("str" if isinstance(elt.value, str) else "number")
        if len(types) > 1:
            raise self.fail(node, "a list mixes text and numbers", "quote all values, or none")
        elem = "str" if types == {"str"} else "int"
        return Expr(self.unit.constant(frozenset(values), "_S"), f"set:{elem}")

    def _List(self, node: ast.List) -> Expr:
        return self._set_literal(node, node.elts)

    def _Tuple(self, node: ast.Tuple) -> Expr:
        return self._set_literal(node, node.elts)

    def _Set(self, node: ast.Set) -> Expr:
        return self._set_literal(node, node.elts)

    def _Call(self, node: ast.Call) -> Expr:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, f"'{ast.unparse(node.func)}' cannot be called",
                            f"only the functions of the rule language: {', '.join(sorted(FUNCTIONS))}")
        name = node.func.id
        fn = FUNCTIONS.get(name)
        if fn is None:
            close = difflib_close(name, FUNCTIONS.keys())
            raise self.fail(node, f"unknown function '{name}'",
                            f"did you mean {close}?" if close else f"functions: {', '.join(sorted(FUNCTIONS))}")
        if node.keywords or len(node.args) != len(fn.args):
            raise self.fail(node, f"{name}() takes {len(fn.args)} argument(s)", f"e.g. {fn.doc}")
        args, reads = [], []
        for arg_node, want in zip(node.args, fn.args):
            if want == "regex":
                if not (isinstance(arg_node, ast.Constant) and isinstance(arg_node.value, str)):
                    raise self.fail(node, f"{name}() needs its pattern as a text constant", f"e.g. {fn.doc}")
                args.append(self.unit.constant(compile_regex(arg_node.value, self, node), "_R"))
                continue
            e = self.expr(arg_node)
            if not (_compatible(e.type, want) if want != "number" else _is_number(e.type)):
                raise self.fail(node, f"{name}() argument '{ast.unparse(arg_node)}' is {_type_name(e.type)}, "
                                      f"expected {_type_name(want)}", f"e.g. {fn.doc}")
            args.append(e.src)
            reads += e.reads
        fn_local = self.unit.constant(fn.impl, "_F")
        returns = fn.returns if fn.returns != "number" else "float"
        return Expr(f"{fn_local}({', '.join(args)})", returns, nullable=fn.returns != "bool", reads=_unique(reads))


def difflib_close(word: str, options, cutoff: float = 0.6) -> str | None:
    import difflib
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=cutoff)
    return close[0] if close else None


def _unique(reads) -> tuple[str, ...]:
    return tuple(dict.fromkeys(reads))


def _clash_hint(left: Expr, right: Expr) -> str | None:
    """What a field of one type is usually compared with, e.g. phone.region == "GB"."""
    for side, other in ((left, right), (right, left)):
        if side.field:
            example = {"str": '"text"', "bool": "true", "int": "3", "float": "0.5"}.get(side.type, "...")
            return f"{side.field} is {_type_name(side.type)}: compare it with {_type_name(side.type)}, " \
                   f"e.g. {side.field} == {example}"
    return None


def _syntax_hint(line: str) -> str:
    if "&&" in line or "||" in line:
        return "write and / or instead of && / ||"
    if "!" in line and "!=" not in line:
        return "write not instead of !"
    if re.search(r"(?<![=!<>])=(?!=)", line):
        return "compare with ==, not ="
    if line.count("(") != line.count(")") or line.count("[") != line.count("]"):
        return "brackets do not pair up"
    if line.count('"') % 2 or line.count("'") % 2:
        return "a quote is not closed"
    return "see docs/rules.md for the syntax"


def _describe(node: ast.AST) -> str:
    try:
        return f"'{ast.unparse(node)}'"
    except Exception:  # pragma: no cover - unparse handles every node ast.parse makes
        return type(node).__name__


# --- regular expressions ------------------------------------------------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False       # a refused pattern is reported to the rule author, not stderr


def compile_regex(pattern: str, compiler: _Compiler, node: ast.AST | None = None):
    """Compile a rule's regex with RE2: matching takes time linear in the input, whatever the
    pattern (no catastrophic backtracking); what RE2 cannot compile (back-references,
    look-arounds, huge repeats) is refused here, at load."""
    if len(pattern) > MAX_REGEX_LENGTH:
        raise compiler.fail(node, f"regex longer than {MAX_REGEX_LENGTH} characters",
                            "split it into several matches() joined with or")
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise compiler.fail(node, f"regex {pattern!r} is not accepted: {reason}",
                            "rule regexes use RE2 syntax: no back-references or look-arounds, repeats up to {1000}")


# --- whole rule sets ----------------------------------------------------------------------------

# CPython releases without the fix of gh-106905 (such as 3.11.7) keep the AST converter's
# recursion depth per interpreter, not per thread: two threads in ast.parse at once can raise
# "SystemError: AST constructor recursion depth mismatch" (seen once in this suite). Rules load in
# request threads and in the embedded rescoring thread, so kyc's one ast.parse call takes this
# lock; parsing is a rules-load cost, never a per-request one.
_AST_LOCK = threading.Lock()


def parse_condition(text: str) -> ast.AST:
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("empty condition", "write a condition, e.g. email.disposable")
    # Explicit line continuations keep each line's number, so errors point at the right line;
    # blank lines before the condition (`when: |` then an empty line) count too.
    lead = len(text) - len(text.lstrip("\n"))
    lines = text.strip("\n").splitlines()
    source = " \\\n".join(line.strip() for line in lines)
    if len(source) > MAX_CONDITION_LENGTH:
        raise ConditionError(f"condition longer than {MAX_CONDITION_LENGTH} characters",
                             "split it into several rules, or move long value sets into rules/lists/")
    try:
        with _AST_LOCK:
            tree = ast.parse(_escape_keyword_fields(source), mode="eval")
    except SyntaxError as exc:
        line = exc.lineno or 1
        raise ConditionError(f"cannot read the condition: {exc.msg} (column {exc.offset})",
                             _syntax_hint(lines[line - 1] if 0 < line <= len(lines) else source),
                             line - 1 + lead) from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise ConditionError(f"cannot read the condition: {exc}", "simplify the condition") from None
    _check_depth(tree.body)
    if lead:
        ast.increment_lineno(tree, lead)
    return tree.body


def _check_depth(root: ast.AST) -> None:
    """Refuse conditions nested deeper than MAX_DEPTH (e.g. 1,900 unary minus signs), walking
    the tree without recursion so the check itself cannot overflow the stack."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConditionError(f"the condition is nested more than {MAX_DEPTH} levels deep",
                                 "simplify it, or split it into several rules",
                                 (getattr(node, "lineno", 1) or 1) - 1)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


_KEYWORD_SUFFIX = "__kw"


def _escape_keyword_fields(source: str) -> str:
    """`device.class` is a field, but `class` is a Python keyword: rename such attribute names
    before parsing (outside string literals) and map them back in _Attribute. And make every
    text literal raw, so regexes need no doubled backslashes."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return source                      # ast.parse reports the real problem
    edits = [(tok.end, _KEYWORD_SUFFIX) for prev, tok in zip(tokens, tokens[1:])
             if tok.type == tokenize.NAME and keyword.iskeyword(tok.string)
             and prev.type == tokenize.OP and prev.string == "."]
    # Text is raw: a backslash stays a backslash, as a regex in matches() expects ("\.com$").
    edits += [(tok.start, "r") for tok in tokens if tok.type == tokenize.STRING and tok.string[0] in "'\""]
    if not edits:
        return source
    lines = source.split("\n")
    for (row, col), insert in sorted(edits, reverse=True):
        lines[row - 1] = lines[row - 1][:col] + insert + lines[row - 1][col:]
    return "\n".join(lines)


def compile_condition(unit: CompileUnit, text: str) -> str:
    """Check one condition and return its Python source over the unit's locals."""
    return _Compiler(unit, text).condition(parse_condition(text))


def build_function(unit: CompileUnit, conditions: list[str], name: str) -> Callable[[dict], list[int]]:
    """One function for a whole rule set: returns the indexes of the conditions that hold."""
    lines = [f"def {name}(S):", "    _hits = []"]
    families: dict[str, str] = {}
    for field_name, local in unit.field_locals.items():
        family, key = field_name.split(".", 1)
        if family not in families:
            families[family] = f"_ns{len(families)}"
            lines.append(f"    {families[family]} = S.get({family!r}) or _EMPTY")
        lines.append(f"    {local} = {families[family]}.get({key!r})")
    for i, cond in enumerate(conditions):
        lines += [
            "    try:",
            f"        if {cond}:",
            f"            _hits.append({i})",
            "    except _ERRORS:",
            "        pass",
        ]
    lines.append("    return _hits")
    # Arithmetic or helpers meeting a missing value (TypeError) or a zero divisor: the rule does not fire.
    errors = (TypeError, ZeroDivisionError, AttributeError, OverflowError, ValueError)
    namespace: dict[str, Any] = {"__builtins__": {}, "_EMPTY": {}, "_ERRORS": errors}
    namespace.update(unit.constants)
    code = compile("\n".join(lines), f"<rules:{name}>", "exec")
    exec(code, namespace)  # noqa: S102 - source generated above from whitelisted nodes only
    return namespace[name]
