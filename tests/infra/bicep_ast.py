"""A small reader for Bicep files on top of tree-sitter-bicep.

No Bicep compiler can be installed where CI runs, so the checks in
test_bicep.py work on the syntax tree: declarations, object properties,
literal values, and a light resolver that follows `var` names (and module
parameters) far enough to say where a value comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import tree_sitter_bicep
from tree_sitter import Language, Node, Parser

_PARSER = Parser(Language(tree_sitter_bicep.language()))

# Bicep's built-in functions (sys namespace) and the az namespace; a call to
# anything else is a typo the compiler would reject.
BUILTIN_FUNCTIONS = {
    # any / array / object
    "any", "array", "concat", "contains", "empty", "first", "last", "flatten", "indexOf",
    "lastIndexOf", "intersection", "items", "join", "length", "max", "min", "range", "skip",
    "take", "union", "objectKeys", "shallowMerge", "tryGet", "toObject", "filter", "map",
    "reduce", "sort", "mapValues", "groupBy", "tryIndexFromEnd", "indexFromEnd",
    # comparison / logical / numeric
    "coalesce", "equals", "greater", "greaterOrEquals", "less", "lessOrEquals", "and", "or",
    "not", "bool", "int", "float", "json", "string",
    # string
    "base64", "base64ToJson", "base64ToString", "dataUri", "dataUriToString", "endsWith",
    "format", "guid", "newGuid", "padLeft", "replace", "split", "startsWith", "substring",
    "toLower", "toUpper", "trim", "uniqueString", "uri", "uriComponent",
    "uriComponentToString", "utcNow", "dateTimeAdd", "dateTimeFromEpoch", "dateTimeToEpoch",
    "buildUri", "parseUri", "parseCidr", "cidrSubnet", "cidrHost",
    # deployment / scope / resource
    "deployment", "environment", "resourceGroup", "subscription", "tenant", "managementGroup",
    "resourceId", "subscriptionResourceId", "tenantResourceId", "extensionResourceId",
    "managementGroupResourceId", "reference", "pickZones", "providers", "deployer",
    "readEnvironmentVariable", "externalInput",
    # files
    "loadJsonContent", "loadTextContent", "loadFileAsBase64", "loadYamlContent",
    "loadDirectoryFileInfo",
}
NAMESPACES = {"az", "sys"}

GUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def node_text(node: Node) -> str:
    return node.text.decode("utf-8")


def named(node: Node) -> list[Node]:
    return [c for c in node.children if c.is_named and c.type != "comment"]


def syntax_problems(path: Path) -> list[str]:
    """file:line:col for every ERROR or MISSING node."""
    tree = _PARSER.parse(path.read_bytes())
    problems: list[str] = []

    def walk(n: Node) -> None:
        if n.type == "ERROR" or n.is_missing:
            line, col = n.start_point
            what = f"MISSING {n.type}" if n.is_missing else "syntax ERROR"
            snippet = node_text(n).splitlines()[0][:60] if n.text else ""
            problems.append(f"{path}:{line + 1}:{col + 1}: {what} near {snippet!r}")
        for ch in n.children:
            walk(ch)

    walk(tree.root_node)
    return problems


# ---------------------------------------------------------------- literals


def string_value(node: Node | None) -> str | None:
    """The value of a string without interpolation, else None."""
    if node is None or node.type != "string":
        return None
    parts = []
    for ch in node.children:
        if ch.type == "interpolation":
            return None
        if ch.type == "string_content":
            parts.append(node_text(ch))
        elif ch.type == "escape_sequence":
            parts.append({"\\'": "'", "\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\t": "\t",
                          "\\$": "$"}.get(node_text(ch), node_text(ch)))
    return "".join(parts)


_NOT_LITERAL = object()


def literal(node: Node | None):
    """Python value of a literal expression; _NOT_LITERAL when it is not one."""
    if node is None:
        return _NOT_LITERAL
    t = node.type
    if t == "string":
        v = string_value(node)
        return _NOT_LITERAL if v is None else v
    if t == "number":
        return int(node_text(node))
    if t == "boolean":
        return node_text(node) == "true"
    if t == "null":
        return None
    if t == "unary_expression" and node_text(node).startswith("-"):
        v = literal(named(node)[-1])
        return -v if isinstance(v, int) else _NOT_LITERAL
    if t == "array":
        out = [literal(c) for c in named(node)]
        return _NOT_LITERAL if any(v is _NOT_LITERAL for v in out) else out
    if t == "object":
        out = {}
        for k, v in object_items(node):
            val = literal(v)
            if val is _NOT_LITERAL:
                return _NOT_LITERAL
            out[k] = val
        return out
    return _NOT_LITERAL


def is_literal(value) -> bool:
    return value is not _NOT_LITERAL


def property_key(prop: Node) -> str:
    key = named(prop)[0]
    return string_value(key) if key.type == "string" else node_text(key)


def object_items(obj: Node) -> list[tuple[str, Node]]:
    items = []
    for prop in obj.children:
        if prop.type == "object_property":
            kids = named(prop)
            items.append((property_key(prop), kids[-1]))
    return items


def get(obj: Node | None, *path: str) -> Node | None:
    """Value node at obj.path[0].path[1]..., or None."""
    cur = obj
    for key in path:
        if cur is None or cur.type != "object":
            return None
        cur = dict(object_items(cur)).get(key)
    return cur


# ------------------------------------------------------------ declarations


@dataclass
class Resource:
    symbol: str
    type: str  # e.g. Microsoft.Web/sites (API version dropped)
    api_version: str
    body: Node  # the object
    decorators: list[str]
    existing: bool
    condition: Node | None
    loop: Node | None
    node: Node


@dataclass
class Module:
    symbol: str
    path: str
    body: Node
    node: Node


@dataclass
class Param:
    name: str
    type: str
    default: Node | None
    decorators: list[str]


@dataclass
class BicepFile:
    path: Path
    root: Node
    params: dict[str, Param] = field(default_factory=dict)
    vars: dict[str, Node] = field(default_factory=dict)
    resources: list[Resource] = field(default_factory=list)
    modules: list[Module] = field(default_factory=list)
    outputs: dict[str, Node] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def resources_of(self, rtype: str, include_existing: bool = False) -> list[Resource]:
        return [r for r in self.resources
                if r.type.lower() == rtype.lower() and (include_existing or not r.existing)]

    def resource(self, symbol: str) -> Resource | None:
        return next((r for r in self.resources if r.symbol == symbol), None)

    def module(self, symbol: str) -> Module | None:
        return next((m for m in self.modules if m.symbol == symbol), None)

    def modules_of(self, suffix: str) -> list[Module]:
        return [m for m in self.modules if m.path.endswith(suffix)]

    def module_file(self, module: Module) -> "BicepFile":
        return load(str((self.path.parent / module.path).resolve()))

    def line(self, node: Node) -> str:
        return f"{self.path}:{node.start_point[0] + 1}"

    # -------------------------------------------------------- resolution

    def resolve(self, node: Node | None) -> Node | None:
        """Follow var names (and parenthesised expressions) to the value node."""
        seen = set()
        while node is not None:
            if node.type == "parenthesized_expression":
                node = named(node)[0]
            elif node.type == "identifier" and node_text(node) in self.vars and node_text(node) not in seen:
                seen.add(node_text(node))
                node = self.vars[node_text(node)]
            else:
                return node
        return None

    def expand(self, node: Node | None, depth: int = 0) -> str:
        """Source text of an expression with var names replaced by their values."""
        if node is None:
            return ""
        if depth > 20:
            return node_text(node)
        if node.type == "identifier" and node_text(node) in self.vars:
            return "(" + self.expand(self.vars[node_text(node)], depth + 1) + ")"
        if node.child_count == 0:
            return node_text(node)
        out = []
        last_end = node.start_byte
        src = self.root.text
        for ch in node.children:
            out.append(src[last_end - self.root.start_byte:ch.start_byte - self.root.start_byte].decode())
            out.append(self.expand(ch, depth + 1))
            last_end = ch.end_byte
        out.append(src[last_end - self.root.start_byte:node.end_byte - self.root.start_byte].decode())
        return "".join(out)

    def literal_value(self, node: Node | None):
        """Literal value after following vars; a bare param gives its default."""
        node = self.resolve(node)
        if node is not None and node.type == "identifier" and node_text(node) in self.params:
            return literal(self.params[node_text(node)].default)
        return literal(node)


def _decorator_names(decorators: Node | None) -> list[str]:
    names = []
    if decorators is None:
        return names
    for d in decorators.children:
        if d.type != "decorator":
            continue
        call = next((c for c in d.children if c.is_named), None)
        if call is None:
            continue
        fn = call.child_by_field_name("function") if call.type == "call_expression" else call
        names.append(node_text(fn).split(".")[-1] if fn is not None else node_text(call))
    return names


def _unwrap_body(value: Node) -> tuple[Node, Node | None, Node | None]:
    """(object, condition, loop) of a resource/module value."""
    loop = cond = None
    if value.type == "for_statement":
        loop = value
        value = value.child_by_field_name("body") or named(value)[-1]
    if value.type == "if_statement":
        cond = value
        value = named(value)[-1]
    return value, cond, loop


def parse_file(path: Path) -> BicepFile:
    tree = _PARSER.parse(path.read_bytes())
    f = BicepFile(path=path, root=tree.root_node)
    pending: Node | None = None
    for node in tree.root_node.children:
        if node.type == "decorators":
            pending = node
            continue
        decos = _decorator_names(pending)
        pending = None
        kids = named(node)
        if node.type == "parameter_declaration":
            ptype = node_text(kids[1]) if len(kids) > 1 else ""
            default = kids[2] if len(kids) > 2 else None
            f.params[node_text(kids[0])] = Param(node_text(kids[0]), ptype, default, decos)
        elif node.type == "variable_declaration":
            f.vars[node_text(kids[0])] = kids[-1]
        elif node.type == "output_declaration":
            f.outputs[node_text(kids[0])] = kids[-1]
        elif node.type == "resource_declaration":
            type_str = string_value(kids[1]) or ""
            rtype, _, api = type_str.partition("@")
            existing = any(c.type == "existing" for c in node.children)
            body, cond, loop = _unwrap_body(kids[-1])
            f.resources.append(Resource(node_text(kids[0]), rtype, api, body, decos, existing,
                                        cond, loop, node))
        elif node.type == "module_declaration":
            body, _, _ = _unwrap_body(kids[-1])
            f.modules.append(Module(node_text(kids[0]), string_value(kids[1]) or "", body, node))
    return f


@lru_cache(maxsize=None)
def load(path: str) -> BicepFile:
    return parse_file(Path(path))


# ------------------------------------------------------- symbol checking


def undefined_symbols(f: BicepFile) -> list[str]:
    """Identifiers used in expressions that no declaration, loop or lambda defines,
    and calls to functions Bicep does not have."""
    top = set(f.params) | set(f.vars) | {r.symbol for r in f.resources} | {m.symbol for m in f.modules}
    problems: list[str] = []

    def check_ident(n: Node, scope: set[str]) -> None:
        name = node_text(n)
        if name not in scope and name not in NAMESPACES:
            problems.append(f"{f.line(n)}: undefined symbol '{name}'")

    def walk(n: Node, scope: set[str]) -> None:
        t = n.type
        if t in ("decorators", "decorator", "type", "comment", "target_scope_assignment"):
            return
        if t in ("parameter_declaration", "variable_declaration", "output_declaration",
                 "resource_declaration", "module_declaration"):
            for ch in named(n)[1:]:  # skip the declared name
                walk(ch, scope)
            return
        if t == "object_property":
            for ch in named(n)[1:]:  # skip the key
                walk(ch, scope)
            return
        if t == "for_statement":
            inner = set(scope)
            for ch in n.children:
                if ch.type in ("loop_variable", "loop_enumerator"):
                    inner.add(node_text(ch))
                elif ch.type == "for_loop_parameters":
                    inner |= {node_text(c) for c in ch.children if c.type in ("loop_variable", "loop_enumerator")}
            init = n.child_by_field_name("initializer")
            if init is not None:
                inner.add(node_text(init))
            seen_in = False
            for ch in n.children:
                if ch.type == "in":
                    seen_in = True
                    continue
                if not seen_in or ch.type in ("loop_variable", "loop_enumerator", "for_loop_parameters"):
                    continue
                walk(ch, inner if ch != n.children[-1] else inner)
            return
        if t == "lambda_expression":
            inner = set(scope)
            kids = n.children
            arrow = next(i for i, c in enumerate(kids) if c.type == "=>")
            for c in kids[:arrow]:
                if c.type == "identifier":
                    inner.add(node_text(c))
                for cc in c.children:
                    if cc.type == "identifier":
                        inner.add(node_text(cc))
            for c in kids[arrow + 1:]:
                walk(c, inner)
            return
        if t == "call_expression":
            fn = n.child_by_field_name("function")
            if fn is not None and fn.type == "identifier":
                if node_text(fn) not in BUILTIN_FUNCTIONS:
                    problems.append(f"{f.line(fn)}: unknown function '{node_text(fn)}()'")
            elif fn is not None:
                walk(fn, scope)
            args = n.child_by_field_name("arguments")
            if args is not None:
                walk(args, scope)
            return
        if t == "member_expression":
            obj = n.child_by_field_name("object")
            if obj is not None:
                walk(obj, scope)
            return
        if t == "identifier":
            check_ident(n, scope)
            return
        for ch in n.children:
            walk(ch, scope)

    for node in f.root.children:
        walk(node, top)
    return problems


def module_interface_problems(f: BicepFile) -> list[str]:
    """Module paths exist, passed params are declared, required params are passed,
    and every <module>.outputs.<name> names a declared output."""
    problems: list[str] = []
    targets: dict[str, BicepFile] = {}
    for m in f.modules:
        target = (f.path.parent / m.path)
        if not target.is_file():
            problems.append(f"{f.line(m.node)}: module file {m.path} does not exist")
            continue
        mf = load(str(target.resolve()))
        targets[m.symbol] = mf
        passed = dict(object_items(get(m.body, "params"))) if get(m.body, "params") is not None else {}
        for name in passed:
            if name not in mf.params:
                problems.append(f"{f.line(m.node)}: module {m.symbol} passes '{name}', which {mf.name} does not declare")
        for name, p in mf.params.items():
            if p.default is None and name not in passed:
                problems.append(f"{f.line(m.node)}: module {m.symbol} does not pass required param '{name}' of {mf.name}")
    for m_sym, out in re.findall(r"\b(\w+)\.outputs\.(\w+)", node_text(f.root)):
        if m_sym in targets and out not in targets[m_sym].outputs:
            problems.append(f"{f.path}: {m_sym}.outputs.{out} is not an output of {targets[m_sym].name}")
    return problems


def guids_in(f: BicepFile, node: Node | None) -> set[str]:
    return {g.lower() for g in GUID_RE.findall(f.expand(node))}
