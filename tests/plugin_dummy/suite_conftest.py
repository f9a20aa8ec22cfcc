# The plugin's tests/conftest.py: pytest's detailed assertion messages inside the suite.
import pytest

pytest.register_assert_rewrite("tracelet.testing")
