"""Every command's --help shows an example: help is the first documentation users read."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from tracelet.cli import main


def test_group_help_has_example():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output


@pytest.mark.parametrize("name", sorted(main.commands))
def test_command_help_has_example(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert any(line.strip().startswith("Example") for line in result.output.splitlines()), \
        result.output
    assert f"tracelet {name}" in result.output  # the example runs this very command
