"""The README's first command on a fresh clone with nothing beside it.

The repository is cloned into an empty temporary folder (no ``../shared``, no ``$CASTLIB_DATA``,
an empty ``$CASTLIB_CACHE`` and an empty ``$HOME``), and ``make quickstart`` runs there as a new
user would type it (with small sizes). It must find the data the repository ships, build its own
``.venv`` and model cache, print both accuracies and no ``ERROR`` line (pip's dependency resolver
included), and write nothing into the user's Jupyter folders. Slow (a venv and a model cache are built from scratch): marked ``fresh_clone``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.fresh_clone, pytest.mark.real_model]


def _pip_cache() -> str:
    out = subprocess.run(
        ["python3", "-m", "pip", "cache", "dir"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or str(Path.home() / ".cache" / "pip")


@pytest.mark.skipif(
    shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make"
)
def test_make_quickstart_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "castlib"
    subprocess.run(["git", "clone", "-q", "--no-local", str(REPO), str(clone)], check=True)
    assert not (tmp_path / "shared").exists()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASTLIB_", "VIRTUAL_ENV"))}
    env.update(
        HOME=str(home),
        CASTLIB_CACHE=str(tmp_path / "cache"),
        PIP_CACHE_DIR=_pip_cache(),  # the user's pip cache: only downloads are reused
        HF_HUB_OFFLINE="1",
        PATH=os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p),
    )
    proc = subprocess.run(
        ["make", "quickstart", "QUICKSTART_ARGS=--n-test 16 --dev 16"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert not errors, f"make quickstart printed errors: {errors[:5]}"
    assert re.search(r"zero-shot test accuracy \(n=16\): [01]\.\d{3}", out), out[-2000:]
    assert re.search(r"steered test accuracy .*: [01]\.\d{3}", out), out[-2000:]
    assert (clone / ".venv" / "share" / "jupyter" / "kernels" / "castlib").is_dir()
    assert not (home / ".local" / "share" / "jupyter").exists(), "setup wrote to the user's Jupyter"
    assert any((tmp_path / "cache").iterdir()), "the model cache was not built in $CASTLIB_CACHE"
