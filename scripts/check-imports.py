#!/usr/bin/env python3
"""The import rule of crates/README.md: within a crate, the files' imports form no loop.

Each source file is a module (`a.rs` and `a/mod.rs` are `a`, `a/b.rs` is `a::b`). A file that names
`crate::x::...` (or `super::x` for a sibling) depends on the module `x`; a module using its own children, and
children using their parent, are one unit and not counted. Prints every loop found and exits 1 if there is one.
"""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "crates"


def module_of(src: pathlib.Path, f: pathlib.Path) -> tuple:
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def uses(text: str, me: tuple, modules: set) -> set:
    """The modules of this crate that `text` (the file of module `me`) names."""
    found = set()
    # `crate::a::b`, and the groups of `use crate::{a, b::{c, d}}`.
    for m in re.finditer(r"\bcrate::((?:\w+::)*\w+|\{)", text):
        if m.group(1) == "{":
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            for path in re.findall(r"\b(\w+(?:::\w+)*)", text[m.end() : i]):
                found.add(tuple(path.split("::")))
        else:
            found.add(tuple(m.group(1).split("::")))
    for m in re.finditer(r"\bsuper::((?:\w+::)*\w+)", text):
        found.add(me[:-1] + tuple(m.group(1).split("::")))
    out = set()
    for path in found:
        # The longest prefix that is a module of this crate.
        for n in range(len(path), 0, -1):
            if path[:n] in modules:
                out.add(path[:n])
                break
    return out


def related(a: tuple, b: tuple) -> bool:
    """Whether one module is the other or an ancestor of it."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


loops = []
for manifest in sorted(root.glob("*/Cargo.toml")):
    src = manifest.parent / "src"
    files = {module_of(src, f): f for f in src.rglob("*.rs")}
    modules = set(files)
    graph = {}
    for me, f in files.items():
        deps = uses(strip_comments(f.read_text()), me, modules)
        graph[me] = {d for d in deps if not related(me, d)}
    # Depth-first search for a cycle through each module.
    state = {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for d in sorted(graph.get(node, ())):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                loops.append((manifest.parent.name, cycle))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])

for crate, cycle in loops:
    names = " -> ".join("::".join(m) or "lib" for m in cycle)
    print(f"import loop in crates/{crate}: {names}")
if loops:
    sys.exit(1)
print(f"no import loops between files ({sum(1 for _ in root.glob('*/src/**/*.rs'))} files)")
