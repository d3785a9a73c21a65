"""The import graph between diffaudit's parts, read from the source (no import is executed).

    python scripts/import_graph.py            # edges, cycles, upward edges; exit 1 if there is a cycle or an upward edge
    python scripts/import_graph.py --local    # also list the function-local imports, with the comment that justifies each

A part is a subpackage (``data``, ``diffusion``, ...) or a top-level module (``config``, ``io``, ...). Data flows
one way, and each part may import only the parts in lower layers (``LAYERS``); an import of a part in the same or a
higher layer is an upward edge (the same layer only within a part).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "diffaudit"

#: Lowest first. A part may import parts of lower layers only.
LAYERS = [
    {"errors", "__init__"},
    {"extras", "rng"},
    {"config", "io", "device", "runlock"},
    {"images", "parallel", "digests"},
    {"data"},
    {"diffusion"},
    {"training", "adversary"},
    {"models"},
    {"privacy", "generate"},
    {"audit"},
    {"cli"},
    {"__main__"},
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """``diffaudit.audit.count.stage`` -> ``audit``; ``diffaudit.config`` -> ``config``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int, bool, str]]:
    """(imported diffaudit module, line, function-local?, the comment above it) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
        elif isinstance(node, ast.Import):
            target = node.names[0].name
        else:
            continue
        if not target.startswith("diffaudit"):
            continue
        local = id(node) not in top and not _in_type_checking(tree, node)
        comment = lines[node.lineno - 2].strip() if node.lineno >= 2 else ""
        out.append((target, node.lineno, local, comment if comment.startswith("#") else ""))
    return out


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    for stmt in tree.body:
        if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
            if any(n is node for n in ast.walk(stmt)):
                return True
    return False


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles, seen = [], set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in stack:
                cycle = stack[stack.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    cycles.append(cycle)
            elif len(stack) < 12:
                visit(nxt, stack + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    return cycles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local", action="store_true", help="list the function-local imports too")
    args = parser.parse_args()
    edges: dict[str, set[str]] = defaultdict(set)
    upward, local_imports = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        for target, line, local, comment in imports(path):
            a, b = part_of(me), part_of(target)
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if local:
                local_imports.append((where, target, comment))
            if a == b:
                continue
            edges[a].add(b)
            if LAYER.get(b, -1) >= LAYER.get(a, 99):
                upward.append(f"{where}: {a} (layer {LAYER.get(a)}) imports {target} (layer {LAYER.get(b)})")
    print("parts by layer (lowest first):")
    for i, parts in enumerate(LAYERS):
        print(f"  {i}: {', '.join(sorted(parts))}")
    print("\nedges between parts:")
    for a in sorted(edges, key=lambda p: (LAYER.get(p, 99), p)):
        print(f"  {a:<10} -> {', '.join(sorted(edges[a], key=lambda p: (LAYER.get(p, 99), p)))}")
    cycles = find_cycles(edges)
    print(f"\ncycles: {len(cycles)}")
    for c in cycles:
        print("  " + " -> ".join(c))
    print(f"upward edges: {len(upward)}")
    for u in upward:
        print("  " + u)
    print(f"function-local imports of diffaudit modules: {len(local_imports)}")
    if args.local:
        for where, target, comment in local_imports:
            print(f"  {where}: {target}  {comment}")
    return 1 if cycles or upward else 0


if __name__ == "__main__":
    sys.exit(main())
