"""Fixtures shared by the `pagedllm bench ...` tests."""
import pytest

from pagedllm.entrypoints.cli import main


@pytest.fixture
def cli_help(capsys):
    """``cli_help("bench", "models")``: the text `pagedllm bench models --help` prints, once it has
    exited 0 and named its usage line (every bench test of the flags checks both first)."""
    def run(*words: str) -> str:
        with pytest.raises(SystemExit) as exc:
            main([*words, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: pagedllm {' '.join(words)}" in out
        return out

    return run
