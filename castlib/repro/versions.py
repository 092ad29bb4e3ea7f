"""The library versions a run was made with, and the lock they are checked against.

Every batch run records, in its ``run.json`` (`castlib.repro.runs.execute_run`), the environment
that executed its notebook as ``versions``: `environment_versions` gives
``{"python": "3.11.7", "sys_platform": "linux", "platform_machine": "x86_64",
"packages": {name: version}}`` with every installed distribution (names normalised as in
PEP 503: lower case, runs of ``-_.`` as ``-``).

The project keeps one lock, ``requirements.lock.txt`` (written by ``make lock`` with
``uv pip compile --universal``; ``make setup`` installs it with ``pip install -c``): one exact
``name==version`` per line, with an environment marker where the version differs between
Pythons or platforms. `locked_versions` reads the pins that apply to a recorded environment
(the markers evaluated for its Python and platform), and `record_problem` says why an archived
record does not match the lock, or None:

* a record with ``versions``: every recorded package that the lock pins must have the lock's
  version (PEP 440 ``==``, so ``2.13.0+cpu`` matches a pin ``2.13.0``), unless the record
  carries a ``versions_note`` saying why it differs;
* a record without ``versions`` (made before runs recorded them, or by a kernel outside the
  batch's interpreter) must carry a ``versions_note`` saying so.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.specifiers import SpecifierSet

__all__ = [
    "LOCK_FILE",
    "NOTE_FIELD",
    "VERSIONS_FIELD",
    "environment_versions",
    "locked_versions",
    "normalise",
    "read_lock",
    "record_problem",
    "version_differences",
]

LOCK_FILE = "requirements.lock.txt"
VERSIONS_FIELD = "versions"
NOTE_FIELD = "versions_note"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)\s*(?:;\s*(.+))?$")


def normalise(name: str) -> str:
    """A distribution name in PEP 503 form (``Jinja2`` -> ``jinja2``, ``ruamel_yaml`` ->
    ``ruamel-yaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def environment_versions() -> dict[str, Any]:
    """The running interpreter's Python version, platform and every installed distribution
    with its version (what a run records as ``versions``)."""
    packages: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages.setdefault(normalise(name), dist.version)
    return {
        "python": platform.python_version(),
        "sys_platform": sys.platform,
        "platform_machine": platform.machine(),
        "packages": dict(sorted(packages.items())),
    }


def read_lock(path: str | Path) -> list[tuple[str, str, str | None]]:
    """The pins of a lock file: ``(name, version, marker or None)`` per ``name==version`` line
    (comments, ``# via`` annotations and options skipped). Raises ValueError naming the line
    for a requirement that is not an exact pin."""
    path = Path(path)
    pins = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        match = _PIN.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: not an exact pin (name==version): {raw!r}")
        name, version, marker = match.groups()
        pins.append((normalise(name), version, marker.strip() if marker else None))
    if not pins:
        raise ValueError(f"{path} holds no pin; rewrite it with `make lock`")
    return pins


def _environment(versions: Mapping[str, Any]) -> dict[str, str]:
    python = str(versions.get("python", platform.python_version()))
    env = {
        "python_full_version": python,
        "python_version": ".".join(python.split(".")[:2]),
    }
    if "sys_platform" in versions:
        env["sys_platform"] = str(versions["sys_platform"])
        env["platform_system"] = {"linux": "Linux", "darwin": "Darwin", "win32": "Windows"}.get(
            env["sys_platform"], env["sys_platform"]
        )
    if "platform_machine" in versions:
        env["platform_machine"] = str(versions["platform_machine"])
    return env


def locked_versions(
    lock: list[tuple[str, str, str | None]], versions: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """``{name: version}`` of the pins that apply to the environment described by ``versions``
    (its ``python``, ``sys_platform`` and ``platform_machine``; the running interpreter's for
    what it leaves out)."""
    env = _environment(versions or {})
    out: dict[str, str] = {}
    for name, version, marker in lock:
        if marker is None or Marker(marker).evaluate(env):
            out[name] = version
    return out


def version_differences(
    versions: Mapping[str, Any], lock: list[tuple[str, str, str | None]]
) -> dict[str, tuple[str, str]]:
    """``{name: (recorded, locked)}`` for every recorded package whose version the lock pins
    to another (PEP 440 ``==``: a local label such as ``+cpu`` is ignored)."""
    pinned = locked_versions(lock, versions)
    packages = versions.get("packages") or {}
    out = {}
    for raw_name, recorded in packages.items():
        name = normalise(raw_name)
        if name in pinned and not SpecifierSet(f"=={pinned[name]}").contains(
            str(recorded), prereleases=True
        ):
            out[name] = (str(recorded), pinned[name])
    return dict(sorted(out.items()))


def record_problem(
    record: Mapping[str, Any], lock: list[tuple[str, str, str | None]]
) -> str | None:
    """Why ``record`` (a run.json) does not match the lock, or None when it does or its
    ``versions_note`` says why not (see the module docstring)."""
    note = str(record.get(NOTE_FIELD) or "").strip()
    versions = record.get(VERSIONS_FIELD)
    if not versions:
        if note:
            return None
        return f"records no {VERSIONS_FIELD!r} and no {NOTE_FIELD!r} saying why"
    if not isinstance(versions, Mapping) or not isinstance(versions.get("packages"), Mapping):
        return f"{VERSIONS_FIELD!r} is not {{'python': ..., 'packages': {{name: version}}}}"
    differences = version_differences(versions, lock)
    if not differences or note:
        return None
    listed = ", ".join(f"{n} {rec} (lock: {lk})" for n, (rec, lk) in differences.items())
    return f"ran with {listed} and has no {NOTE_FIELD!r} saying why"
