"""Packaging of seven-segments, the Python client of the 7SEGMENTS tracking and export API."""

import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION: dict = {}
with open(os.path.join(HERE, "seven_segments", "_version.py"), encoding="utf-8") as handle:
    exec(handle.read(), VERSION)
with open(os.path.join(HERE, "README.md"), encoding="utf-8") as handle:
    LONG_DESCRIPTION = handle.read()

setup(
    name="seven-segments",
    version=VERSION["__version__"],
    description="Python client of the 7SEGMENTS tracking and export API: blocking and background-buffered tracking",
    long_description=LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["seven_segments", "seven_segments.*"]),
    package_data={"seven_segments": ["py.typed"]},
    python_requires=">=3.8",
    install_requires=["requests>=2.20", "tenacity>=8.2"],
    extras_require={
        "test": ["pytest>=7", "freezegun>=1.2", "hypothesis>=6", "pytest-timeout>=2"],
        "dev": ["mypy>=1.8", "types-requests", "ruff"],
    },
    entry_points={
        "console_scripts": ["seven-segments=seven_segments.cli:main"],
        "pytest11": ["seven_segments=seven_segments.testing.pytest_plugin"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Typing :: Typed",
        "Framework :: Pytest",
        "License :: OSI Approved :: MIT License",
    ],
)
