"""Pin every declared dependency to its declared minimum, for pip's ``--constraint``.

    python3 tools/min_constraints.py [pyproject.toml] > build/min-constraints.txt
    .venv-min/bin/python tools/min_constraints.py --installed   # what an environment has of them

Reads ``[project] dependencies`` and every list of ``[project.optional-dependencies]`` and turns each
``name>=X`` into ``name==X`` (``==1.23`` is 1.23.0); requirements with no lower bound are left out.
``--installed`` prints instead the running Python's version and the installed version of each of those
dependencies, on one line. Only the standard library is used: ``tomllib`` (Python 3.11+), else the
copy of tomli that pip carries (so any environment made by ``python -m venv`` can run it).
"""

from __future__ import annotations

import argparse
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib  # type: ignore[no-redef]

# name, optional [extras], then the version specifiers up to an environment marker.
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)(;.*)?$")


def minimum(requirement: str) -> tuple[str, str | None, str]:
    """Return ``(name, minimum or None, marker)`` of one PEP 508 requirement."""
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise SystemExit(f"cannot read the requirement {requirement!r}")
    name, _extras, specifiers, marker = match.groups()
    lowest = None
    for specifier in specifiers.split(","):
        specifier = specifier.strip()
        if specifier.startswith(">="):
            lowest = specifier[2:].strip()
        elif specifier.startswith(("==", "~=")):
            lowest = specifier[2:].strip().removesuffix(".*")
    return name, lowest, (marker or "").strip()


def installed(names: list[str]) -> str:
    """Return ``Python X.Y.Z: name version, ...`` for the running interpreter."""
    from importlib import metadata

    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return f"Python {sys.version.split()[0]}: " + ", ".join(found)


def main() -> None:
    """Print the constraints for the pyproject.toml given (default: the one in the current folder)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pyproject", nargs="?", default="pyproject.toml")
    parser.add_argument("--installed", action="store_true", help="print the installed versions instead")
    args = parser.parse_args()
    with open(args.pyproject, "rb") as file:
        project = tomllib.load(file)["project"]
    requirements = list(project.get("dependencies", []))
    for listed in project.get("optional-dependencies", {}).values():
        requirements.extend(listed)
    if args.installed:
        names = dict.fromkeys(minimum(requirement)[0] for requirement in requirements)
        print(installed(list(names)))
        return
    pins: dict[str, str] = {}
    for requirement in requirements:
        name, lowest, marker = minimum(requirement)
        key = re.sub(r"[-_.]+", "-", name).lower()
        if lowest is None:
            continue
        line = f"{name}=={lowest}" + (f" {marker}" if marker else "")
        if pins.setdefault(key, line) != line:
            raise SystemExit(f"{name} has two different minimums: {pins[key]!r} and {line!r}")
    sys.stdout.write(f"# The declared minimum of each dependency, from {args.pyproject}.\n")
    sys.stdout.writelines(line + "\n" for line in pins.values())


if __name__ == "__main__":
    main()
