#!/usr/bin/env python3
"""Turns every code example of the README and the public headers into a C++ file to compile.

README: each ```cpp block is a whole translation unit.
Headers: the block after a comment line "Example:" (lines "//   code", blank "//" lines
inside) becomes the body of a function in a file that includes the header and the shared
context (tests/doc_examples/example_context.h), which declares the names an example takes
for granted (`app`, `parent`, `ext`, ...). Lines of a snippet that declare a namespace-scope
`inline` variable are hoisted out of the function.

Usage: extract_examples.py SOURCE_DIR OUTPUT_DIR  (prints the generated files, one a line)
"""
import pathlib
import re
import sys

# Headers whose example is a function returning something else than absl::Status.
RETURN_TYPES = {"examples/host/host.h": "int"}
# Declarations an example of one header takes for granted beyond the shared context.
PREAMBLES = {"examples/host/host.h": "using namespace framekit::host;  // NOLINT"}

# A function definition at the top level of a snippet: the snippet is then namespace-scope code.
FUNCTION_DEFINITION = re.compile(r"^[A-Za-z_][\w:<>, &*]*\s+[A-Za-z_]\w*\(.*\)\s*(const\s*)?\{\s*$")


def header_examples(path: pathlib.Path):
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if re.match(r"^//\s*Example:\s*$", lines[i]):
            block = []
            i += 1
            while i < len(lines) and (lines[i] == "//" or lines[i].startswith("//   ")):
                block.append(lines[i][5:] if lines[i].startswith("//   ") else "")
                i += 1
            while block and not block[-1].strip():
                block.pop()
            while block and not block[0].strip():
                block.pop(0)
            if block:
                yield block
        i += 1


def split_hoisted(block):
    """Separates namespace-scope declarations (inline variables) from statements."""
    hoisted, body, in_hoist = [], [], False
    for line in block:
        if not in_hoist and line.startswith("inline "):
            in_hoist = True
        (hoisted if in_hoist else body).append(line)
        if in_hoist and line.rstrip().endswith(";"):
            in_hoist = False
    return hoisted, body


def main():
    source, output = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    output.mkdir(parents=True, exist_ok=True)
    generated = []
    readme = (source / "README.md").read_text()
    for n, block in enumerate(re.findall(r"```cpp\n(.*?)```", readme, re.S)):
        out = output / f"readme_{n}.cc"
        out.write_text(f"// Generated from README.md, block {n}.\n{block}")
        generated.append(out)
    headers = sorted(source.glob("*/include/framekit/**/*.h")) + [source / "examples/host/host.h"]
    for header in headers:
        rel = header.relative_to(source).as_posix()
        if "/internal/" in rel:
            continue
        for n, block in enumerate(header_examples(header)):
            hoisted, body = split_hoisted(block)
            if any(FUNCTION_DEFINITION.match(line) for line in block):
                hoisted, body = block, []
            include = rel.split("/include/", 1)[1] if "/include/" in rel else header.name
            name = re.sub(r"[^A-Za-z0-9]", "_", rel)
            ret = RETURN_TYPES.get(rel, "absl::Status")
            tail = "  return absl::OkStatus();\n" if ret == "absl::Status" else ""
            text = (f"// Generated from {rel}, example {n}.\n"
                    f'#include "{include}"\n#include "example_context.h"\n\n'
                    f"namespace doc_example_{name}_{n} {{\n"
                    "using namespace framekit_doc_examples;  // NOLINT\n"
                    + PREAMBLES.get(rel, "") + "\n"
                    + "\n".join(hoisted) + "\n\n"
                    + (f"[[maybe_unused]] {ret} Example() {{\n"
                       + "\n".join("  " + l if l else "" for l in body) + "\n" + tail + "}\n"
                       if body else "")
                    + "}  // namespace\n")
            out = output / f"{name}_{n}.cc"
            out.write_text(text)
            generated.append(out)
    for path in generated:
        print(path)


if __name__ == "__main__":
    main()
