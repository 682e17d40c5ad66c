"""pytest-benchmark suites of fastal (a package so that its conftest does not shadow tests/conftest.py)."""
