#!/usr/bin/env python3
"""Reports the shape of src/ that the house style cares about (../shared/STYLE.md):

  - functions longer than --max-lines (default 80), with file, line, name and length;
  - string literals of the contract's header names outside broker/ and protocol/.

A function is counted from its `fn` line to its closing brace; test modules (`#[cfg(test)]`
blocks and files named tests*.rs or *_tests.rs) are left out. Usage:
  scripts/code-shape.py [src-dir] [--max-lines N]
Exits 0; prints counts last.
"""
import os
import re
import sys

HEADERS = [
    "x-model-version",
    "x-deadline-ms",
    "x-delivery-count",
    "x-error-code",
    "x-error",
    "inference-header-content-length",
]
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")


def rust_files(src):
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            if f.startswith("tests") or f.endswith("_tests.rs") or f == "tests.rs":
                continue
            if "/tests/" in os.path.join(root, f):
                continue
            yield os.path.join(root, f)


def strip_strings(line):
    """The line with string and char literals blanked, so braces inside them do not count."""
    return re.sub(r'"(\\.|[^"\\])*"', '""', re.sub(r"'(\\.|[^'\\])'", "''", line))


def functions(lines):
    """(name, first line number, length) of every function outside #[cfg(test)] blocks."""
    out = []
    i = 0
    skip_depth = None
    depth = 0
    pending_test = False
    stack = []  # (name, start, depth at open)
    while i < len(lines):
        raw = lines[i]
        code = strip_strings(raw.split("//")[0])
        if "#[cfg(test)]" in raw:
            pending_test = True
        m = FN.match(code)
        if m and skip_depth is None and "{" in code or (m and skip_depth is None and not code.rstrip().endswith(";")):
            if m:
                stack.append((m.group(6), i + 1, depth, False))
        for ch in code:
            if ch == "{":
                if pending_test and skip_depth is None:
                    skip_depth = depth
                    pending_test = False
                depth += 1
                if stack and not stack[-1][3] and skip_depth is None:
                    name, start, d, _ = stack[-1]
                    stack[-1] = (name, start, d, True)
            elif ch == "}":
                depth -= 1
                if skip_depth is not None and depth == skip_depth:
                    skip_depth = None
                if stack and stack[-1][3] and depth == stack[-1][2]:
                    name, start, _, _ = stack.pop()
                    out.append((name, start, i + 1 - start + 1))
        if code.rstrip().endswith(";") and stack and not stack[-1][3]:
            stack.pop()  # a declaration without a body (trait method)
        if pending_test and code.strip() and "#[" not in code and "{" not in code and code.rstrip().endswith(";"):
            pending_test = False  # #[cfg(test)] on a single item such as `mod tests;`
        i += 1
    return out


def main():
    args = sys.argv[1:]
    max_lines = 80
    if "--max-lines" in args:
        k = args.index("--max-lines")
        max_lines = int(args[k + 1])
        del args[k : k + 2]
    src = args[0] if args else "src"
    long_fns = []
    literals = []
    for path in rust_files(src):
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for name, start, length in functions(lines):
            if length > max_lines:
                long_fns.append((length, path, start, name))
        rel = os.path.relpath(path, src)
        if rel.startswith("broker/") or rel.startswith("protocol/"):
            continue
        for n, line in enumerate(lines, 1):
            code = line.split("//")[0]
            for h in HEADERS:
                if f'"{h}"' in code:
                    literals.append((path, n, h))
    for length, path, start, name in sorted(long_fns, reverse=True):
        print(f"long function: {path}:{start} {name} ({length} lines)")
    for path, n, h in literals:
        print(f"header literal: {path}:{n} {h}")
    print(f"functions over {max_lines} lines: {len(long_fns)}")
    print(f"header-name literals outside broker/ and protocol/: {len(literals)}")


if __name__ == "__main__":
    main()
