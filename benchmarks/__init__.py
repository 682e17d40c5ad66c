"""pytest-benchmark suites of fastal (a package: its conftest must not shadow tests/conftest.py)."""
