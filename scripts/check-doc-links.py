#!/usr/bin/env python3
"""Checks that every relative link in the README, ARCHITECTURE.md, SECURITY.md, bench/README.md
and docs/ resolves to a file in the repository, and that every page in docs/ is reachable from
docs/SUMMARY.md. Exits non-zero, naming each broken link."""
import pathlib, re, sys

root = pathlib.Path(__file__).resolve().parent.parent
pages = [root / "README.md", root / "ARCHITECTURE.md", root / "SECURITY.md", root / "bench/README.md"]
pages += sorted((root / "docs").glob("*.md"))
link = re.compile(r"\]\(([^)\s]+)\)")
bad = []
for page in pages:
    if not page.exists():
        bad.append(f"{page.relative_to(root)}: missing")
        continue
    in_code = False
    for n, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        for target in link.findall(line):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#")[0]
            if not (page.parent / path).exists():
                bad.append(f"{page.relative_to(root)}:{n}: {target} does not resolve")
summary = (root / "docs/SUMMARY.md").read_text()
for page in sorted((root / "docs").glob("*.md")):
    if page.name != "SUMMARY.md" and f"]({page.name})" not in summary:
        bad.append(f"docs/{page.name}: not reachable from docs/SUMMARY.md")
for b in bad:
    print(b)
print(f"{len(pages)} pages checked, {len(bad)} broken")
sys.exit(1 if bad else 0)
