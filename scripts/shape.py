#!/usr/bin/env python3
"""The crate's shape, for keeping it readable: production functions over a length, and import
cycles between modules.

    python3 scripts/shape.py            # functions over 80 lines, then cycles
    python3 scripts/shape.py --top 10   # the ten longest production functions
    python3 scripts/shape.py --check    # exit 1 if either list is not empty

Test code is left out: files declared `#[cfg(test)] mod x;` and any item under `#[cfg(test)]`
or `#[test]`. A module's imports are the `crate::` and `super::` paths its production code
names, each resolved to the file that defines the name (through `pub use` re-exports); a
cycle is a strongly connected set of two or more files.
"""

import argparse
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
LIMIT = 80


def strip(text):
    """The text with comments, strings and char literals blanked, newlines kept."""
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
        elif c == "r" and re.match(r'r#*"', text[i:]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i : j + 1]))
            i = j + 1
        elif c == "'":
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching(text, open_at):
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text) - 1


def item_end(text, start):
    """Where the item starting at `start` ends: its closing brace, or its `;`."""
    depth = 0
    for j in range(start, len(text)):
        if text[j] in "([":
            depth += 1
        elif text[j] in ")]":
            depth -= 1
        elif text[j] == ";" and depth == 0:
            return j
        elif text[j] == "{" and depth == 0:
            return matching(text, j)
    return len(text) - 1


def blank_tests(text):
    """The stripped text with every `#[cfg(test)]` or `#[test]` item blanked."""
    out = list(text)
    for m in re.finditer(r"#\[(cfg\(test\)|test)\]", text):
        end = item_end(text, m.end())
        for k in range(m.start(), end + 1):
            if out[k] != "\n":
                out[k] = " "
    return "".join(out)


def modules():
    """Every production source file, by module path ("crate::upstream::key_state")."""
    found = {}

    def visit(path, name, directory):
        with open(path, encoding="utf-8") as f:
            text = blank_tests(strip(f.read()))
        found[name] = (path, text)
        for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text, re.M):
            child = m.group(1)
            for candidate in (os.path.join(directory, child + ".rs"), os.path.join(directory, child, "mod.rs")):
                if os.path.exists(candidate):
                    sub = os.path.dirname(candidate) if candidate.endswith("mod.rs") else os.path.join(directory, child)
                    visit(candidate, name + "::" + child, sub)
                    break

    visit(os.path.join(SRC, "lib.rs"), "crate", SRC)
    return found


def long_functions(found):
    rows = []
    for name, (path, text) in found.items():
        for m in re.finditer(r"\bfn\s+(\w+)", text):
            open_at = item_end(text, m.end())
            if text[open_at] != "}":
                continue  # a declaration without a body
            body_start = text.rfind("{", m.end(), open_at + 1)
            # the opening brace of the body is the first `{` at depth 0 after the signature
            depth, j = 0, m.end()
            while j < len(text):
                if text[j] in "([":
                    depth += 1
                elif text[j] in ")]":
                    depth -= 1
                elif text[j] == "{" and depth == 0:
                    break
                j += 1
            body_start = j
            first = text.count("\n", 0, m.start()) + 1
            last = text.count("\n", 0, matching(text, body_start)) + 1
            owner = ""
            for imp in re.finditer(r"\bimpl\b[^{;]*?\b(?:for\s+)?(\w+)\s*(?:<[^{]*>)?\s*(?:where[^{]*)?\{", text[: m.start()]):
                if matching(text, imp.end() - 1) > m.start():
                    owner = imp.group(1) + "::"
            rows.append((last - first + 1, os.path.relpath(path, os.path.join(SRC, "..")), first, owner + m.group(1)))
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    return rows


def reexports(found):
    """(module, name) -> the module a `pub use` of it points at, for names a module passes on."""
    table = {}
    for name, (_, text) in found.items():
        for use in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            for p in expand(use.group(1)):
                parts = p.split("::")
                if parts[0] == "crate":
                    full = parts
                elif parts[0] == "self":
                    full = name.split("::") + parts[1:]
                elif parts[0] == "super":
                    full = name.split("::")[:-1] + parts[1:]
                else:
                    full = name.split("::") + parts
                table[(name, parts[-1])] = "::".join(full)
    return table


def resolve(path, found, table, depth=0):
    """The file that defines what `path` names: the longest module prefix, followed through
    re-exports."""
    parts = path.split("::")
    for k in range(len(parts), 0, -1):
        target = "::".join(parts[:k])
        if target in found:
            if k < len(parts) and depth < 8:
                via = table.get((target, parts[k]))
                if via and via != path:
                    return resolve(via, found, table, depth + 1)
            return target
    return None


def imports(found):
    table = reexports(found)
    edges = {name: set() for name in found}
    for name, (_, text) in found.items():
        # the module `super` names: the parent of this file's module
        parent = name.rsplit("::", 1)[0] if "::" in name else name
        paths = []
        for use in re.finditer(r"(?<!pub )\buse\s+([^;]+);", text):
            paths += expand(use.group(1))
        paths += re.findall(r"\b(?:crate|super)(?:::\w+)+", text)
        for p in paths:
            if p.startswith("super"):
                p = parent + p[len("super") :]
            elif p.startswith("self::"):
                p = name + p[len("self") :]
            elif not p.startswith("crate"):
                continue
            target = resolve(p, found, table)
            if target and target != name and not name.startswith(target + "::") and target != "crate":
                edges[name].add(target)
    return edges


def expand(tree):
    """`a::{b, c::{d}}` into ["a::b", "a::c::d"]."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^([\w:]*?)::\{(.*)\}$", tree)
    if not m:
        return [re.sub(r"as\w+$", "", tree)]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for part in filter(None, parts):
        out += [prefix + "::" + p for p in expand(part)]
    return out


def cycles(edges):
    """Strongly connected sets of two or more modules (Tarjan)."""
    index, low, stack, on, result, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                result.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--top", type=int, help="list the N longest production functions")
    parser.add_argument("--limit", type=int, default=LIMIT)
    parser.add_argument("--under", help="only files under this path (e.g. src/upstream)")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    found = modules()
    rows = long_functions(found)
    if args.under:
        rows = [r for r in rows if r[1].startswith(args.under)]
    shown = rows[: args.top] if args.top else [r for r in rows if r[0] > args.limit]
    print("functions" + (f" (the {args.top} longest)" if args.top else f" over {args.limit} lines") + ":")
    for lines, path, line, fn in shown:
        print(f"  {lines:4}  {path}:{line}  {fn}")
    edges = imports(found)
    groups = cycles(edges)
    print("import cycles:")
    for group in groups:
        print("  " + " <-> ".join(g.replace("crate::", "") for g in group))
        for a in group:
            for b in sorted(edges[a] & set(group)):
                print(f"      {a.replace('crate::', '')} -> {b.replace('crate::', '')}")
    if args.check and (groups or any(r[0] > args.limit for r in rows)):
        sys.exit(1)


if __name__ == "__main__":
    main()
