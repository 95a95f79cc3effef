#!/usr/bin/env python3
"""Stub out the wrappers of libtorch ops that an older libtorch does not have.

tch's C shim (torch-sys libtch/torch_api_generated.cpp) wraps every op of the libtorch its
version targets. Compiled against an older libtorch, the wrappers of ops that libtorch
lacks (or whose signature changed) do not compile. This replaces the body of each listed
wrapper with one that raises "<op> is not available in this libtorch" through tch's error
path, so the shim compiles and links and every other op is untouched. fomoe calls none of
the stubbed ops.

Usage: stub-ops.py LIST_FILE SRC_CPP OUT_CPP   (LIST_FILE: one atg_ name per line, # comments)
"""
import re
import sys


def main() -> int:
    list_file, src, out = sys.argv[1:4]
    names = [
        l.split("#")[0].strip()
        for l in open(list_file, encoding="utf-8")
        if l.split("#")[0].strip()
    ]
    text = open(src, encoding="utf-8").read()
    for name in names:
        head = re.search(r"^void " + re.escape(name) + r"\(.*?\) \{\n", text, re.M | re.S)
        if head is None:
            print(f"stub-ops: {name} not found in {src}", file=sys.stderr)
            return 1
        end = text.index("\n}\n", head.end())
        op = name[len("atg_"):]
        body = f'  PROTECT(throw std::invalid_argument("{op} is not available in this libtorch");)'
        text = text[: head.end()] + body + text[end:]
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"stub-ops: {len(names)} wrappers stubbed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
