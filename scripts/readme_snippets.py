#!/usr/bin/env python3
"""Keeps README.md's code snippets identical to the regions of the examples they come from.

A region in an example is delimited by `// [readme:NAME]` and `// [/readme:NAME]`; README.md holds
`<!-- snippet: examples/FILE.cpp NAME -->` followed by a ```cpp block. `--check` (the ctest)
fails when a snippet differs from its source; `--update` rewrites README.md from the examples.
"""
import pathlib
import re
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARK = re.compile(r"<!-- snippet: (\S+) (\S+) -->\n```cpp\n(.*?)```\n", re.S)


def region(path: str, name: str) -> str:
    text = (ROOT / path).read_text()
    m = re.search(r"[ \t]*// \[readme:%s\]\n(.*?)[ \t]*// \[/readme:%s\]" % (name, name), text, re.S)
    if not m:
        sys.exit(f"readme_snippets: region '{name}' not found in {path}")
    return textwrap.dedent(m.group(1))


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "--check"
    readme = (ROOT / "README.md").read_text()
    found = list(MARK.finditer(readme))
    if not found:
        print("readme_snippets: README.md has no snippets")
        return 1
    bad = [f"{m.group(1)}:{m.group(2)}" for m in found if region(m.group(1), m.group(2)) != m.group(3)]
    if mode == "--update":
        new = MARK.sub(lambda m: f"<!-- snippet: {m.group(1)} {m.group(2)} -->\n```cpp\n"
                       f"{region(m.group(1), m.group(2))}```\n", readme)
        (ROOT / "README.md").write_text(new)
        print(f"readme_snippets: {len(found)} snippets written")
        return 0
    if bad:
        print("readme_snippets: README.md differs from the examples for: " + ", ".join(bad))
        print("run: python3 scripts/readme_snippets.py --update")
        return 1
    print(f"readme_snippets: {len(found)} snippets match their examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
