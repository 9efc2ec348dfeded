"""Ctrl+C in a command that has no stop of its own ends with one line and the shell's exit code
for SIGINT (130), not a KeyboardInterrupt traceback."""
import pytest

from stable_sam import cli
from stable_sam.commands import demo


def test_ctrl_c_in_a_command_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run", interrupted)
    try:
        code = cli.main(["demo"])
    except KeyboardInterrupt:  # let the rest of the session run
        pytest.fail("Ctrl+C escaped the CLI as a KeyboardInterrupt traceback")
    assert code == 130
    assert capsys.readouterr().err == "stable-sam demo: interrupted by Ctrl+C\n"
