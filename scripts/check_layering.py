#!/usr/bin/env python3
"""Checks the layering of include/toptheta: a header may include only headers of its own layer
or of a lower one. Layers, bottom to top:

  0 base      config, version, status, types, options, workspace
  1 detail    detail/*: SIMD primitives, selection, conversions (no stage, no kernel)
  2 stage     every other header at the root and io/*: thresholds, calibration, selection,
              sparse softmax + SDC, gather + VMC, statistics, KV cache, arguments, I/O
  3 kernels   kernels/*: the decode and prefill walkers, the per-row pipeline
  4 entry     attention.hpp: decode / prefill / workspace_size; plan.hpp: the task interface
              and batched decode
  5 umbrella  toptheta.hpp
  6 oracle    reference/*: the test oracle (may include anything below the umbrella)

Exit 0 when every include goes down or sideways; 1 with one line per violation otherwise.
Usage: scripts/check_layering.py [include_dir]
"""
import os
import re
import sys

BASE = {"config.hpp", "version.hpp", "status.hpp", "types.hpp", "options.hpp", "workspace.hpp"}
NAMES = ["base", "detail", "stage", "kernels", "entry", "umbrella", "oracle"]


def layer(rel):
    top = rel.split("/")[0]
    if rel in BASE:
        return 0
    if top == "detail":
        return 1
    if top == "kernels":
        return 3
    if rel in ("attention.hpp", "plan.hpp"):
        return 4
    if rel == "toptheta.hpp":
        return 5
    if top == "reference":
        return 6
    return 2


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "include", "toptheta")
    root = os.path.normpath(root)
    inc = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
    bad = []
    count = 0
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if not (f.endswith(".hpp") or f.endswith(".inl")):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    m = inc.match(line)
                    if not m:
                        continue
                    target = os.path.normpath(os.path.join(dirpath, m.group(1)))
                    trel = os.path.relpath(target, root).replace(os.sep, "/")
                    if trel.startswith(".."):
                        bad.append(f"{rel}:{n}: includes {m.group(1)} outside include/toptheta")
                        continue
                    if not os.path.exists(target):
                        bad.append(f"{rel}:{n}: includes missing {m.group(1)}")
                        continue
                    count += 1
                    if layer(trel) > layer(rel):
                        bad.append(f"{rel}:{n}: {NAMES[layer(rel)]} header includes "
                                   f"{NAMES[layer(trel)]} header {trel}")
    for b in bad:
        print(b)
    if bad:
        print(f"check_layering: {len(bad)} violation(s) in {count} includes")
        return 1
    print(f"check_layering: {count} includes, all downward or within a layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
