#!/usr/bin/env bash
# File-level import cycles: within each crate target of the workspace (lib, bins, tests, benches,
# examples), a file must import only downward, so no two files may import each other, directly or
# through a loop. Prints every cycle with the line that makes each step; exits 1 if there is one.
#   scripts/check_cycles.sh               every crate of the workspace (needs cargo, for the targets)
#   scripts/check_cycles.sh --no-tests    ignores imports inside #[cfg(test)] items
#   scripts/check_cycles.sh lf-planner …  only these packages
#
# An edge A → B is a `use` in file A, or a path written in A's code (`crate::x::f()`,
# `super::T`, `child::f()`), that names an item of file B. A path through a re-export
# (`crate::Item` where lib.rs says `pub use b::Item`) counts as an edge to the file that defines the
# item, not to lib.rs. `mod b;` alone is not an edge (declaring a child is not depending on it).
# Known limits: macro-generated paths, `#[path]` on inline modules and names brought in by one
# glob (`use a::*`) and then re-exported by another are not followed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
metadata=$(cargo metadata --no-deps --format-version 1 --offline)
exec python3 - "$metadata" "$@" <<'PY'
import json
import os
import re
import sys

metadata = json.loads(sys.argv[1])
args = sys.argv[2:]
include_tests = "--no-tests" not in args
only = {a for a in args if not a.startswith("--")}
root = metadata["workspace_root"]


def clean(text):
    """Comments blanked, string and char literal contents blanked; newlines kept (line numbers)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif re.match(r'(?:b|c)?r(#*)"', text[i:i + 260]) and not re.match(r"\w", text[i - 1:i] or " "):
            m = re.match(r'(?:b|c)?r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + m.end())
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append('"' + re.sub(r"[^\n]", " ", text[i + 1:end - 1]) + '"')
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('"' + re.sub(r"[^\n]", " ", text[i + 1:j]) + '"')
            i = j + 1
        elif c == "'":
            m = re.match(r"'(?:\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'\n])'", text[i:])
            if m:
                out.append("' " + " " * (m.end() - 3) + "'")
                i += m.end()
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Module:
    def __init__(self, path, file, dir_for_children, test):
        self.path = path            # tuple of names from the crate root
        self.file = file            # the file it lives in
        self.dir = dir_for_children  # where `mod x;` inside it looks for x.rs / x/mod.rs
        self.test = test            # inside #[cfg(test)]
        self.children = {}          # name -> Module
        self.defs = set()           # names of items defined in it
        self.uses = {}              # name -> (module, segments, test) for `use` bindings
        self.globs = []             # (module, segments) of `use x::*`
        self.span = None            # (start, end) in the cleaned file text, inline modules only


ITEM = re.compile(
    r"\b(?:(?:const|async|unsafe|extern\s*(?:\"[^\"]*\")?)\s+)*fn\s+(\w+)"
    r"|\b(?:struct|enum|trait|type|union)\s+(\w+)"
    r"|\b(?:const|static)\s+(?:mut\s+)?(\w+)\s*:"
    r"|\bmacro_rules!\s*(\w+)"
)
MOD = re.compile(r"\bmod\s+(?:r#)?(\w+)\s*([;{])")
USE = re.compile(r"\buse\s+([^;{]*(?:\{[^;]*\})?[^;]*);")
PATH_ATTR = re.compile(r'#\[path\s*=\s*"([^"]*)"\s*\]')


def attributes_before(text, pos):
    """The text between the previous item boundary and `pos` (attributes, visibility)."""
    k = pos - 1
    while k >= 0 and text[k] not in ";{}":
        k -= 1
    return text[k + 1:pos]


def depth_at(text):
    depths, d = [], 0
    for ch in text:
        if ch == "}":
            d -= 1
        depths.append(d)
        if ch == "{":
            d += 1
    return depths


def parse_use_tree(s):
    """`a::{b, c::d as e, f::*}` → [(segments, alias or None or '*')]."""
    s = re.sub(r"\s+", "", s)
    out = []

    def walk(prefix, t):
        parts, depth, cur = [], 0, ""
        for ch in t:
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        if cur:
            parts.append(cur)
        for p in parts:
            if "{" in p:
                head, _, rest = p.partition("{")
                head = head.rstrip(":")
                segs = [x for x in head.split("::") if x]
                walk(prefix + segs, rest[:-1] if rest.endswith("}") else rest)
                continue
            segs = [x for x in p.split("::") if x]
            if not segs:
                continue
            last = segs[-1]
            if last == "*":
                out.append((prefix + segs[:-1], "*"))
            elif last == "self":
                out.append((prefix + segs[:-1], None))
            else:
                out.append((prefix + segs, None))

    walk([], s)
    return out


def parse_use(raw):
    """Like parse_use_tree, but keeps `as` aliases (removed before whitespace is squeezed)."""
    aliases = {}

    def keep(m):
        key = f"__alias{len(aliases)}__"
        aliases[key] = m.group(2)
        return m.group(1) + key

    raw = re.sub(r"([\w*}])\s+as\s+(\w+)", keep, raw)
    result = []
    for segs, alias in parse_use_tree(raw):
        if segs and "__alias" in segs[-1]:
            name, key = re.match(r"^(.*?)(__alias\d+__)$", segs[-1]).groups()
            segs = segs[:-1] + [name]
            alias = aliases[key]
        result.append((segs, alias))
    return result


class Crate:
    def __init__(self, package, target, root_file):
        self.name = f"{package} ({target})"
        self.files = {}  # file -> cleaned text
        self.modules = {}  # path tuple -> Module
        self.edges = {}  # (from_file, to_file) -> [(line, text, test)]
        self.root = self.load(root_file, (), os.path.dirname(root_file), False)

    def read(self, file):
        if file not in self.files:
            with open(file, encoding="utf-8") as f:
                raw = f.read()
            self.files[file] = (raw, clean(raw))
        return self.files[file]

    def load(self, file, path, child_dir, test):
        _, text = self.read(file)
        module = Module(path, file, child_dir, test)
        self.modules[path] = module
        self.scan(module, text, 0, len(text), 0, depth_at(text))
        return module

    def scan(self, module, text, start, end, depth, depths):
        """Defines `module`'s items and children between start and end (its body) at `depth`."""
        pos = start
        for m in MOD.finditer(text, start, end):
            if m.start() < pos or depths[m.start()] != depth:
                continue
            name, kind = m.group(1), m.group(2)
            attrs = attributes_before(text, m.start())
            raw_attrs = self.files[module.file][0][m.start() - len(attrs):m.start()]
            test = module.test or "cfg(test)" in attrs.replace(" ", "")
            if kind == ";":
                explicit = PATH_ATTR.search(raw_attrs)
                if explicit:
                    file = os.path.normpath(os.path.join(module.dir, explicit.group(1)))
                    candidates = [file]
                else:
                    candidates = [os.path.join(module.dir, name + ".rs"),
                                  os.path.join(module.dir, name, "mod.rs")]
                file = next((c for c in candidates if os.path.exists(c)), None)
                if file is None:
                    continue
                child_dir = (os.path.dirname(file) if os.path.basename(file) == "mod.rs" or explicit
                             else os.path.join(module.dir, name))
                child = self.load(file, module.path + (name,), child_dir, test)
            else:
                body_start = m.end()
                body_end = body_start
                while body_end < len(text) and depths[body_end] > depth:
                    body_end += 1
                child = Module(module.path + (name,), module.file, os.path.join(module.dir, name), test)
                child.span = (body_start, body_end)
                self.modules[child.path] = child
                self.scan(child, text, body_start, body_end, depth + 1, depths)
                pos = body_end
            module.children[name] = child
            module.defs.add(name)
        for m in ITEM.finditer(text, start, end):
            if depths[m.start()] == depth and not self.inside_child(module, m.start()):
                module.defs.add(next(g for g in m.groups() if g))

    def inside_child(self, module, pos):
        return any(c.span and c.span[0] <= pos < c.span[1] for c in module.children.values())

    def module_at(self, file, pos):
        best = None
        for mod in self.modules.values():
            if mod.file != file:
                continue
            if mod.span is None or mod.span[0] <= pos < mod.span[1]:
                if best is None or len(mod.path) > len(best.path):
                    best = mod
        return best

    def start(self, module, segs):
        """The module a path starts from and the segments left, or None for an external path."""
        first, rest = segs[0], segs[1:]
        if first == "crate":
            return self.root, rest
        if first == "self":
            return module, rest
        if first == "super":
            cur = self.modules.get(module.path[:-1], self.root)
            while rest and rest[0] == "super":
                cur, rest = self.modules.get(cur.path[:-1], self.root), rest[1:]
            return cur, rest
        if first in module.children:
            return module.children[first], rest
        return None

    def resolve(self, module, segs, seen=()):
        """The file that defines what `segs` (a path written in `module`) names, or None."""
        if not segs:
            return None
        started = self.start(module, segs)
        if started is None:
            return None
        cur, rest = started
        while rest and rest[0] in cur.children:
            cur, rest = cur.children[rest[0]], rest[1:]
        if not rest or rest[0] == "*" or rest[0] in cur.defs:
            return cur.file
        key = (cur.path, rest[0])
        if key in seen:
            return cur.file
        if rest[0] in cur.uses:
            target_mod, target_segs, _ = cur.uses[rest[0]]
            found = self.resolve(target_mod, target_segs, seen + (key,))
            return found or cur.file
        for glob_mod, glob_segs in cur.globs:
            found = self.resolve(glob_mod, glob_segs + [rest[0]], seen + (key,))
            if found and found != cur.file:
                return found
        return cur.file

    def collect_uses(self):
        for file, (_, text) in self.files.items():
            for m in USE.finditer(text):
                module = self.module_at(file, m.start())
                attrs = attributes_before(text, m.start())
                test = module.test or "cfg(test)" in attrs.replace(" ", "")
                for segs, alias in parse_use(m.group(1)):
                    if not segs:
                        continue
                    if alias == "*":
                        module.globs.append((module, segs))
                    elif alias != "_":
                        module.uses[alias or segs[-1]] = (module, segs, test)

    def collect_edges(self):
        self.collect_uses()
        for file, (raw, text) in self.files.items():
            lines = raw.splitlines()
            use_spans = [(m.start(), m.end()) for m in USE.finditer(text)]
            for m in USE.finditer(text):
                module = self.module_at(file, m.start())
                attrs = attributes_before(text, m.start())
                test = module.test or "cfg(test)" in attrs.replace(" ", "")
                for segs, alias in parse_use(m.group(1)):
                    if segs:
                        self.add_edge(file, module, segs + (["*"] if alias == "*" else []), text, m.start(), lines, test)
            for m in re.finditer(r"(?<![\w$:])((?:crate|super|self|\w+)(?:::\w+)+)", text):
                if any(a <= m.start() < b for a, b in use_spans):
                    continue
                module = self.module_at(file, m.start())
                segs = m.group(1).split("::")
                if segs[0] not in ("crate", "super", "self") and segs[0] not in module.children:
                    continue
                self.add_edge(file, module, segs, text, m.start(), lines, module.test)

    def add_edge(self, file, module, segs, text, pos, lines, test):
        if segs and segs[-1] == "*":
            started = self.start(module, segs[:-1]) if segs[:-1] else None
            if started is None:
                return
            cur, rest = started
            while rest and rest[0] in cur.children:
                cur, rest = cur.children[rest[0]], rest[1:]
            target = cur.file
        else:
            target = self.resolve(module, segs)
        if target is None or target == file:
            return
        if test and not include_tests:
            return
        line = text.count("\n", 0, pos) + 1
        self.edges.setdefault((file, target), []).append((line, lines[line - 1].strip(), test))

    def tangles(self):
        """Each set of files that import each other through loops, with its elementary cycles."""
        graph = {}
        for a, b in self.edges:
            graph.setdefault(a, set()).add(b)
        return [(comp, elementary_cycles(graph, comp)) for comp in sccs(graph)]


def sccs(graph):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    nodes = sorted(set(graph) | {b for bs in graph.values() for b in bs})

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            strong(v)
    return [c for c in out if len(c) > 1]


MAX_CYCLES = 1000  # per tangle: enumerating stops there (a tangle that large needs no more detail)


def elementary_cycles(graph, comp):
    """The elementary cycles within one strongly connected set, each once, from its first file."""
    found, members = [], set(comp)
    for start in comp:
        allowed = {v for v in members if v >= start}

        def walk(v, path):
            for w in sorted(graph.get(v, ())):
                if len(found) >= MAX_CYCLES:
                    return
                if w == start:
                    found.append(path + [start])
                elif w in allowed and w not in path:
                    walk(w, path + [w])

        walk(start, [start])
    return sorted(found, key=len)


MAX_SHOWN = 12  # cycles printed per tangle; the rest are counted
total, crates_checked, crates_with = 0, 0, 0
rel = lambda f: os.path.relpath(f, root)
for package in sorted(metadata["packages"], key=lambda p: p["name"]):
    if only and package["name"] not in only:
        continue
    for target in package["targets"]:
        if "custom-build" in target["kind"]:
            continue
        crate = Crate(package["name"], f"{target['kind'][0]} {target['name']}", target["src_path"])
        crate.collect_edges()
        crates_checked += 1
        tangles = crate.tangles()
        if not tangles:
            continue
        crates_with += 1
        count = sum(len(cycles) for _, cycles in tangles)
        total += count
        print(f"{crate.name}: {count} cycle{'s' if count != 1 else ''}")
        for comp, cycles in tangles:
            print(f"  {len(comp)} files in one loop: {', '.join(rel(f) for f in comp)}")
            for cycle in cycles[:MAX_SHOWN]:
                print("    " + " → ".join(os.path.basename(f) for f in cycle))
                for a, b in zip(cycle, cycle[1:]):
                    uses = crate.edges[(a, b)]
                    line, source, _ = uses[0]
                    tag = " [cfg(test) only]" if all(t for _, _, t in uses) else ""
                    more = f" (+{len(uses) - 1} more)" if len(uses) > 1 else ""
                    print(f"        {rel(a)}:{line}: {source}{tag}{more}")
            if len(cycles) > MAX_SHOWN:
                print(f"    … and {len(cycles) - MAX_SHOWN} more cycles through these files")
if total:
    print(f"{total} file-level import cycle{'s' if total != 1 else ''} in {crates_with} of {crates_checked} crate targets")
    sys.exit(1)
print(f"no file-level import cycles in {crates_checked} crate targets")
PY
