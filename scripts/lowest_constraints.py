"""Print pip constraints that pin every declared floor: ``name>=X`` -> ``name==X``.

``.ci/run`` installs the suite against them, so a range in ``pyproject.toml`` claims only floors that
were tested. Reads the core dependencies and the extras named on the command line (default: those
``[dev]`` pulls in); requirements without a ``>=`` floor are left to the resolver.

    python scripts/lowest_constraints.py > /tmp/lowest.txt
    pip install -c /tmp/lowest.txt -e ".[dev]"
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
SELF = re.compile(r"^ppllava-hermes\[(?P<extras>[^\]]+)\]$")


def requirements(project: dict, extras: list[str]) -> list[str]:
    """Core dependencies plus ``extras``, following self-references such as ``ppllava-hermes[clip]``."""
    optional = project.get("optional-dependencies", {})
    out, seen, todo = list(project["dependencies"]), set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in optional[extra]:
            m = SELF.match(req.replace(" ", ""))
            if m:
                todo.extend(e.strip() for e in m.group("extras").split(","))
            else:
                out.append(req)
    return out


def floors(reqs: list[str]) -> dict[str, str]:
    """``{name: floor}`` for every requirement with a ``>=`` specifier (the highest floor if repeated)."""
    pins: dict[str, str] = {}
    for req in reqs:
        spec = req.split(";")[0].strip()
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", spec)
        if not m:
            continue
        name, rest = m.group(1).lower(), m.group(2)
        for floor in re.findall(r">=\s*([0-9][0-9A-Za-z.]*)", rest):
            old = pins.get(name)
            pins[name] = floor if old is None or _key(floor) > _key(old) else old
    return pins


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("extras", nargs="*", default=["dev"], help="extras to include (default: dev)")
    args = p.parse_args(argv)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for name, floor in sorted(floors(requirements(project, args.extras)).items()):
        print(f"{name}=={floor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
