"""The project's own modules a file imports, followed transitively."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """The project's modules (paths relative to `root`) that `path` imports, followed transitively.

    Every import statement counts, a function's own included: what a stage may import
    at any point of its run.
    """
    seen: set[str] = set()
    todo = [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        for name in names:
            parts = name.split(".")
            candidates = [root / (name.replace(".", "/") + ".py"), root / "stages" / f"{name}.py"]
            if parts[0] == "fmnist":  # importing fmnist.a.b runs fmnist/__init__.py and fmnist/a/__init__.py
                candidates += [root.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1)]
            for file in candidates:
                rel = str(file.relative_to(root))
                if file.is_file() and rel not in seen:
                    seen.add(rel)
                    todo.append(file)
    return seen
