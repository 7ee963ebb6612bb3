"""The software a run ran with, so that results from different installs are not compared
unknowingly: the interpreter, the libraries whose numerics or scheduling a run depends on,
and crammit's own commit."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import crammit

LIBRARIES = ("torch", "ray", "deepspeed", "transformers", "tokenizers")
RECORDED = ("python", *LIBRARIES, "crammit")  # in the order a record is printed
NOT_INSTALLED = "not installed"


def versions() -> dict[str, str]:
    """Each of LIBRARIES' installed version, python's, and crammit's commit."""
    found = {"python": platform.python_version()}
    for library in LIBRARIES:
        try:
            found[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            found[library] = NOT_INSTALLED
    found["crammit"] = _commit()
    return found


def _commit() -> str:
    """The checkout's commit (with "+changes" when it has uncommitted ones), or the package
    version where crammit is not run from a git checkout."""
    root = Path(crammit.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "crammit")
    except (OSError, subprocess.SubprocessError):
        return crammit.__version__
    return f"{commit}+changes" if dirty else commit


def describe(found: dict[str, str]) -> str:
    """One line, in a fixed order (a run directory's JSON stores the names sorted)."""
    names = sorted(found, key=lambda name: RECORDED.index(name) if name in RECORDED else len(RECORDED))
    return ", ".join(f"{name} {found[name]}" for name in names)
