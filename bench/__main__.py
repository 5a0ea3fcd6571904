"""``python -m bench <name> [args]``: run one benchmark (``bench/<name>.py``'s ``main``).

Each benchmark prints one JSON object on standard output; progress goes to standard error.
``python -m bench all`` runs every benchmark and prints one JSON object keyed by name.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path


def _names() -> list[str]:
    folder = Path(__file__).parent
    return sorted(
        info.name for info in pkgutil.iter_modules([str(folder)]) if not info.name.startswith("_")
    )


def main(argv: list[str]) -> int:
    names = _names()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m bench {{{','.join([*names, 'all'])}}} [args]", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        results = {}
        for each in names:
            print(f"bench: running {each}", file=sys.stderr)
            results[each] = importlib.import_module(f"bench.{each}").run(rest)
        print(json.dumps(results, indent=2))
        return 0
    if name not in names:
        print(f"unknown benchmark {name!r}; choose from {', '.join(names)}", file=sys.stderr)
        return 2
    print(json.dumps(importlib.import_module(f"bench.{name}").run(rest), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
