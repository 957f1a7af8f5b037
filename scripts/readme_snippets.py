#!/usr/bin/env python3
"""Keeps the code snippets of README.md and docs/integration.md identical to the regions of the
examples they come from.

A region in an example is delimited by `// [KIND:NAME]` and `// [/KIND:NAME]`, where KIND is
`readme` for README.md and `integration` for docs/integration.md; the document holds
`<!-- snippet: examples/FILE.cpp NAME -->` followed by a ```cpp block. `--check` (the ctest)
fails when a snippet differs from its source; `--update` rewrites the documents from the
examples.
"""
import pathlib
import re
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARK = re.compile(r"<!-- snippet: (\S+) (\S+) -->\n```cpp\n(.*?)```\n", re.S)
DOCS = [("README.md", "readme"), ("docs/integration.md", "integration")]


def region(path: str, kind: str, name: str) -> str:
    text = (ROOT / path).read_text()
    m = re.search(r"[ \t]*// \[%s:%s\]\n(.*?)[ \t]*// \[/%s:%s\]" % (kind, name, kind, name),
                  text, re.S)
    if not m:
        sys.exit(f"readme_snippets: region '{kind}:{name}' not found in {path}")
    return textwrap.dedent(m.group(1))


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "--check"
    failed = 0
    for doc, kind in DOCS:
        path = ROOT / doc
        if not path.exists():
            print(f"readme_snippets: {doc} is missing")
            failed = 1
            continue
        text = path.read_text()
        found = list(MARK.finditer(text))
        if not found:
            print(f"readme_snippets: {doc} has no snippets")
            failed = 1
            continue
        if mode == "--update":
            new = MARK.sub(lambda m: f"<!-- snippet: {m.group(1)} {m.group(2)} -->\n```cpp\n"
                           f"{region(m.group(1), kind, m.group(2))}```\n", text)
            path.write_text(new)
            print(f"readme_snippets: {doc}: {len(found)} snippets written")
            continue
        bad = [f"{m.group(1)}:{m.group(2)}" for m in found
               if region(m.group(1), kind, m.group(2)) != m.group(3)]
        if bad:
            print(f"readme_snippets: {doc} differs from the examples for: " + ", ".join(bad))
            print("run: python3 scripts/readme_snippets.py --update")
            failed = 1
        else:
            print(f"readme_snippets: {doc}: {len(found)} snippets match their examples")
    return failed


if __name__ == "__main__":
    sys.exit(main())
