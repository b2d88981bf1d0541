#!/usr/bin/env python3
"""Lists import circles between a crate's source files (`use crate::…`, `super::…`, child paths).

Each file is a node; an arrow a -> b means a names an item of b. Prints each strongly connected
group of more than one file and exits 1 if there is any (CI runs it over every crate).
usage: scripts/import-cycles.py [crates/NAME/src ...]
"""
import os
import re
import sys


def modules(src):
    """module path (tuple) -> file, for every .rs file under src."""
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            p = os.path.join(root, f)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            if rel and rel[0] == "bin":
                continue
            out[tuple(rel)] = p
    return out


PATH = re.compile(r"\b((?:crate|super|self|[a-z_][a-z0-9_]*)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GLOB = re.compile(r"\buse\s+((?:crate|super|self)(?:::[a-z_][a-z0-9_]*)*)::\*;")
GROUP = re.compile(r"\buse\s+((?:crate|super|self)(?:::[a-z_][a-z0-9_]*)*)::\{([^;]*)\};", re.S)


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    # test modules may use anything of their parent
    i = text.find("#[cfg(test)]")
    return text if i < 0 else text[:i]


def expand_groups(text):
    paths = []
    for m in GROUP.finditer(text):
        base = m.group(1)
        inner = m.group(2).replace("\n", " ")
        depth = 0
        item = ""
        for ch in inner + ",":
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                item = item.strip()
                if item:
                    head = item.split("::{")[0]
                    paths.append(base + "::" + head.replace("{", "").strip())
                item = ""
            else:
                item += ch
    return paths


def graph(src):
    mods = modules(src)
    edges = {}
    for mod, path in mods.items():
        text = strip(open(path).read())
        is_dir_mod = path.endswith(("mod.rs", "lib.rs", "main.rs"))
        here = mod if is_dir_mod else mod[:-1]  # the module `self::` children live in
        paths = PATH.findall(text) + expand_groups(text) + GLOB.findall(text)
        out = set()
        for p in paths:
            parts = p.split("::")
            if parts[0] == "crate":
                target = parts[1:]
            elif parts[0] == "super":
                base = list(mod[:-1])
                parts = parts[1:]
                while parts and parts[0] == "super":
                    base = base[:-1]
                    parts = parts[1:]
                target = base + parts
            elif parts[0] == "self":
                target = list(mod) + parts[1:]
            elif tuple(list(here) + [parts[0]]) in mods:
                target = list(here) + parts
            else:
                continue
            # longest module prefix
            for n in range(len(target), -1, -1):
                t = tuple(target[:n])
                if t in mods:
                    if t != mod:
                        out.add(t)
                    break
        edges[mod] = out
    return mods, edges


def sccs(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
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
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main():
    srcs = sys.argv[1:] or sorted(
        os.path.join("crates", c, "src") for c in os.listdir("crates") if os.path.isdir(os.path.join("crates", c, "src"))
    )
    bad = 0
    for src in srcs:
        mods, edges = graph(src)
        for comp in sccs(edges):
            if len(comp) > 1:
                bad += 1
                names = sorted(mods[m] for m in comp)
                print(f"circle of {len(comp)} files:")
                for n in names:
                    deps = sorted(mods[t] for t in edges[[m for m in comp if mods[m] == n][0]] if t in comp)
                    print(f"  {n} -> {', '.join(deps)}")
    if bad:
        sys.exit(1)
    print("no import circles")


if __name__ == "__main__":
    main()
