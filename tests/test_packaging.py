"""Packaging: the sdist ships what its own tests need, the metadata is filled, a missing dependency
fails at import with one clear line, and every docs/ page the package names exists."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, List

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def _clean_environment(**extra: str) -> Dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SEVEN_SEGMENTS_") and key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tarfile.TarFile:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install -e '.[dev]')")
    try:
        import setuptools
    except ImportError:
        pytest.skip("setuptools is not installed, and --no-isolation builds with the installed one")
    major = re.match(r"\d+", setuptools.__version__)
    if major is None or int(major.group()) < 61:
        pytest.skip(f"setuptools {setuptools.__version__} is older than pyproject.toml's setuptools>=61")
    out = tmp_path_factory.mktemp("sdist")
    # --no-isolation: the installed setuptools, no download, a few seconds.
    done = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=110, env=_clean_environment(),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if "warn" in line.lower()]
    assert warnings == []  # such as setuptools' "License classifiers are deprecated"
    (archive,) = out.glob("*.tar.gz")
    return tarfile.open(archive)


def _names(sdist: tarfile.TarFile) -> List[str]:
    """The sdist's files, relative to its top directory."""
    return sorted(name.split("/", 1)[1] for name in sdist.getnames() if "/" in name)


def test_the_sdist_ships_what_its_tests_need(sdist: tarfile.TarFile) -> None:
    names = set(_names(sdist))
    needed = {"tests/__init__.py", "tests/conftest.py", "seven_segments.py", "LICENSE", "tox.ini", "README.md",
              "pyproject.toml", "setup.py", "seven_segments/py.typed", "docs/protocol.md"}
    needed |= {path.relative_to(ROOT).as_posix() for path in (ROOT / "tests").glob("*.py")}
    needed |= {path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md")}
    needed |= {path.relative_to(ROOT).as_posix() for path in (ROOT / "benchmarks").glob("*.py")}
    assert needed - names == set()
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc") or "/.venv/" in name]


def test_the_metadata_is_filled(sdist: tarfile.TarFile) -> None:
    (info,) = [name for name in sdist.getnames() if name.count("/") == 1 and name.endswith("/PKG-INFO")]
    handle = sdist.extractfile(info)
    assert handle is not None
    metadata = handle.read().decode()
    assert re.search(r"^(License|License-Expression): MIT$", metadata, re.M)
    assert "Author: seven_segments developers" in metadata
    assert "Requires-Python: >=3.8" in metadata
    for minor in range(8, 14):
        assert f"Classifier: Programming Language :: Python :: 3.{minor}\n" in metadata
    # orjson only with the [fast] extra (and for the tests): the package runs without it
    assert "Provides-Extra: fast" in metadata
    (requires,) = [name for name in sdist.getnames() if name.endswith(".egg-info/requires.txt")]
    handle = sdist.extractfile(requires)
    assert handle is not None
    sections = handle.read().decode().split("\n[")
    assert "orjson" not in sections[0] and any(section.startswith("fast]\norjson>=") for section in sections)


# -- a missing dependency --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def without_tenacity(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """An environment for ``python -S`` whose path has every installed package but tenacity."""
    import requests

    site = Path(requests.__file__).resolve().parent.parent
    shadow = tmp_path_factory.mktemp("no-tenacity")
    for entry in site.iterdir():
        if not entry.name.lower().startswith("tenacity") and not entry.name.endswith(".pth"):
            (shadow / entry.name).symlink_to(entry)
    return _clean_environment(PYTHONPATH=os.pathsep.join([str(ROOT), str(shadow)]))


def test_importing_without_tenacity_fails_at_once_with_one_clear_line(without_tenacity: Dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-S", "-c", "import seven_segments"], capture_output=True, text=True,
                          timeout=60, env=without_tenacity)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "ImportError: seven_segments needs tenacity: pip install tenacity"


def test_the_command_line_without_tenacity_says_so_in_one_line(without_tenacity: Dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-S", str(ROOT / "seven_segments.py"), "track", "token", "john", "purchase"],
        capture_output=True, text=True, timeout=60, env=without_tenacity,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"{ROOT / 'seven_segments.py'}: error: seven_segments needs tenacity: pip install tenacity"]


def test_the_import_does_not_load_tenacity() -> None:
    code = "import sys, seven_segments; print('tenacity' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # checked with find_spec, imported only for a retry


# -- documentation ---------------------------------------------------------------------------------


def test_every_docs_page_named_exists_and_protocol_md_is_not_named() -> None:
    sources = [ROOT / "README.md", ROOT / "setup.py", *ROOT.glob("docs/*.md"), *ROOT.glob("seven_segments/**/*.py"),
               *ROOT.glob("benchmarks/*.py")]
    named = set()
    for source in sources:
        text = source.read_text(encoding="utf-8")
        assert "PROTOCOL.md" not in text, source
        named |= set(re.findall(r"docs/([\w.-]+\.md)", text))
    assert "protocol.md" in named
    assert [page for page in sorted(named) if not (ROOT / "docs" / page).is_file()] == []
