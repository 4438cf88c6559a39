#!/usr/bin/env python3
"""Lists module dependency cycles inside src/ (one level below the crate: `training/csv`, `onnx`).

An edge A -> B is any `super::B` / `crate::X::B` / `crate::B` path in A's file(s). Only modules
of the same parent (siblings) and top-level modules are compared, which is where cycles matter.
Usage: scripts/module-cycles.py [src-dir] [module ...]; exits 1 when a cycle is found.
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "src"
focus = sys.argv[2:]


def modules():
    """(name, files) for each top-level module and each child of a folder module."""
    out = {}
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        if entry.endswith(".rs") and entry not in ("lib.rs", "main.rs"):
            out.setdefault(entry[:-3], []).append(path)
        elif os.path.isdir(path) and entry != "bin":
            for root, _, files in os.walk(path):
                for f in files:
                    if f.endswith(".rs"):
                        out.setdefault(entry, []).append(os.path.join(root, f))
            for f in sorted(os.listdir(path)):
                if f.endswith(".rs") and f != "mod.rs":
                    out.setdefault(f"{entry}/{f[:-3]}", []).append(os.path.join(path, f))
    return out


def edges(mods):
    graph = {m: set() for m in mods}
    for m, files in mods.items():
        parent = m.split("/")[0]
        for f in files:
            text = open(f, encoding="utf-8").read()
            text = re.sub(r"//.*", "", text)
            for top, sub in re.findall(r"crate::(\w+)(?:::(\w+))?", text):
                if "/" not in m and top != m and top in mods:
                    graph[m].add(top)
                if "/" in m and top == parent and f"{top}/{sub}" in mods and f"{top}/{sub}" != m:
                    graph[m].add(f"{top}/{sub}")
            if "/" in m:
                for sub in re.findall(r"\bsuper::(\w+)", text):
                    if f"{parent}/{sub}" in mods and f"{parent}/{sub}" != m:
                        graph[m].add(f"{parent}/{sub}")
    return graph


def cycles(graph):
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


graph = edges(modules())
shown = [c for c in cycles(graph) if not focus or any(n.split("/")[0] in focus for n in c)]
for c in shown:
    print("cycle: " + " -> ".join(c))
if not shown:
    print("no cycles" + (f" in {', '.join(focus)}" if focus else ""))
sys.exit(1 if shown else 0)
