"""Build the optional C fast path of the event-file reader.

Everything else lives in pyproject.toml. ``optional=True``: on a machine without a C compiler the
build still succeeds and the reader runs its pure-Python path (same results, ~10x slower).
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tracelet.reader._fastscan",
            sources=["syncer/tracelet/reader/_fastscan.c"],
            optional=True,
        )
    ]
)
