"""The benchmark's own virtual environment: ``benchmarks/.venv``, with our package and the peers.

It is created with the interpreter that runs ``run.py``. Our package comes from the working tree
(``pip install -e .`` when the repo has packaging metadata, and always ``PYTHONPATH=<repo>``), each
peer is installed by pip on its own, so that one that cannot be installed is reported, not fatal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import libs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV = HERE / ".venv"
STAMP = VENV / "bench-stamp.json"
BASE_REQUIREMENTS = ["requests", "tenacity"]


def venv_python() -> Path:
    return VENV / "bin" / "python"


def _pip(args: List[str], timeout: float = 600) -> Tuple[bool, str]:
    done = subprocess.run(
        [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode == 0, (done.stderr or done.stdout).strip()[-500:]


def ensure(peers: List[str], upgrade: bool = False, log=print, tools: List[str] = ()) -> Dict[str, str]:
    """Make the venv hold our package, ``peers`` and the pip packages ``tools`` (``gunicorn`` for the
    web-app scenario); returns ``{peer or tool: error}`` for those that failed."""
    if not venv_python().exists():
        log(f"creating {VENV} with {sys.executable}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    stamp = json.loads(STAMP.read_text()) if STAMP.exists() and not upgrade else {}
    failures: Dict[str, str] = {}
    if not stamp.get("base"):
        ok, err = _pip(BASE_REQUIREMENTS)
        if not ok:
            raise RuntimeError(f"cannot install {BASE_REQUIREMENTS} into {VENV}: {err}")
        if (REPO / "pyproject.toml").exists() or (REPO / "setup.py").exists():
            ok, err = _pip(["-e", str(REPO)])
            if not ok:
                log(f"pip install -e {REPO} failed, using PYTHONPATH only: {err[-200:]}")
        stamp["base"] = True
    for peer in peers:
        package = libs.LIBRARIES[peer].package
        if stamp.get(package) == "ok":
            continue
        log(f"installing {package} into {VENV}")
        ok, err = _pip((["--upgrade"] if upgrade else []) + [package])
        if ok:
            stamp[package] = "ok"
        else:
            failures[peer] = f"pip install {package} failed: {err.splitlines()[-1] if err else ''}"
    for tool in tools:
        if stamp.get(tool) == "ok":
            continue
        log(f"installing {tool} into {VENV}")
        ok, err = _pip((["--upgrade"] if upgrade else []) + [tool])
        if ok:
            stamp[tool] = "ok"
        else:
            failures[tool] = f"pip install {tool} failed: {err.splitlines()[-1] if err else ''}"
    STAMP.write_text(json.dumps(stamp))
    return failures


def versions(python: str, names: List[str]) -> Dict[str, str]:
    """Installed versions of the libraries ``names`` in the interpreter ``python``."""
    packages = {name: libs.LIBRARIES[name].package for name in names if name != "ours"}
    code = (
        "import json, sys, importlib.metadata as m\n"
        "out = {}\n"
        "for name, package in json.loads(sys.argv[1]).items():\n"
        "    try: out[name] = m.version(package)\n"
        "    except Exception: out[name] = ''\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ)
    try:
        done = subprocess.run([python, "-c", code, json.dumps(packages)], capture_output=True, text=True, timeout=60, env=env)
        found = json.loads(done.stdout or "{}")
    except Exception:
        found = {}
    try:
        sys.path.insert(0, str(REPO))
        from seven_segments._version import __version__

        found["ours"] = __version__
    except Exception:
        found["ours"] = "working tree"
    return found
