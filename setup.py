"""Packaging of seven-segments, the Python client of the 7SEGMENTS tracking and export API.

The build system is declared in pyproject.toml; the metadata is here. ``python -m build`` makes the
sdist (which ships the tests, docs and benchmarks they need: see MANIFEST.in) and the wheel.
"""

import os
import re

import setuptools
from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION: dict = {}
with open(os.path.join(HERE, "seven_segments", "_version.py"), encoding="utf-8") as handle:
    exec(handle.read(), VERSION)
with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
    LONG_DESCRIPTION = handle.read()

CLASSIFIERS = [
    "Intended Audience :: Developers",
    "Programming Language :: Python :: 3",
    "Programming Language :: Python :: 3 :: Only",
    "Programming Language :: Python :: 3.8",
    "Programming Language :: Python :: 3.9",
    "Programming Language :: Python :: 3.10",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
    "Topic :: Software Development :: Libraries",
    "Typing :: Typed",
    "Framework :: Pytest",
]

# The license, as each setuptools understands it: from 77 on, an SPDX expression (PEP 639), with
# which a license classifier is deprecated; before (the last setuptools for Python 3.8 is 75), the
# license field and the classifier.
_major = re.match(r"\d+", setuptools.__version__)
if _major is not None and int(_major.group()) >= 77:
    LICENSE = {"license_expression": "MIT", "license_files": ["LICENSE"]}
else:
    LICENSE = {"license": "MIT", "license_files": ["LICENSE"]}
    CLASSIFIERS.append("License :: OSI Approved :: MIT License")

setup(
    name="seven-segments",
    version=VERSION["__version__"],
    description="Python client of the 7SEGMENTS tracking and export API: blocking and background-buffered tracking",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    author="seven_segments developers",
    packages=find_packages(include=["seven_segments", "seven_segments.*"]),
    package_data={"seven_segments": ["py.typed"]},
    python_requires=">=3.8",
    install_requires=["requests>=2.20", "tenacity>=8.2"],
    extras_require={
        # orjson writes the JSON when it can be imported; the standard library does otherwise.
        "fast": ["orjson>=3.9"],
        "test": [
            "pytest>=7", "freezegun>=1.2", "hypothesis>=6", "pytest-timeout>=2",
            # both JSON writers are proven equal when orjson is there (the tests pass without it)
            "orjson>=3.9",
            # deployment tests (tests/test_deployment.py skips what is missing)
            "billiard>=4", "gevent>=22", "eventlet>=0.33", 'pyuwsgi>=2.0.27; sys_platform != "win32"',
            "uvicorn>=0.20", 'gunicorn>=21; sys_platform != "win32"',
            # network tests (tests/test_network.py): certificates made for the test, a real HTTP proxy
            "trustme>=1.0", "proxy.py>=2.4",
            # seven_segments.metrics with the real SDKs (tests/test_metrics.py skips what is missing)
            "opentelemetry-sdk>=1.12", "prometheus-client>=0.12",
        ],
        "dev": ["mypy>=1.8", "types-requests", "ruff", "build"],
        # seven_segments.metrics: instrument() and register_prometheus() import these only when called
        "otel": ["opentelemetry-api>=1.12"],
        "prometheus": ["prometheus-client>=0.12"],
    },
    entry_points={
        "console_scripts": ["seven-segments=seven_segments.cli:main"],
        "pytest11": ["seven_segments=seven_segments.testing.pytest_plugin"],
    },
    classifiers=CLASSIFIERS,
    **LICENSE,
)
