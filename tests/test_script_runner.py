"""A command's output in its log, and the end of that log in the error when the command fails."""
import os

import pytest

from ofa_el.script_runner import TAIL_LINES, CommandFailed, run_logged


def test_output_interleaved_into_the_log(tmp_path):
    log = tmp_path / "logs" / "run.log"
    output = run_logged(["sh", "-c", "echo one; echo two >&2; echo three"], os.environ, log=log)
    assert output == log.read_text() == "one\ntwo\nthree\n"


@pytest.mark.parametrize("to_file", [True, False])
def test_a_failure_shows_the_end_of_the_log(tmp_path, to_file):
    script = f"for i in $(seq 1 {TAIL_LINES + 10}); do echo line $i; done; echo broken >&2; exit 3"
    with pytest.raises(CommandFailed) as caught:
        run_logged(["sh", "-c", script], os.environ, log=tmp_path / "run.log" if to_file else None)
    message = str(caught.value)
    assert "failed (exit 3)" in message and message.rstrip().endswith("broken")
    shown = message.splitlines()[1:]
    assert len(shown) == TAIL_LINES and shown[0] == "line 12" and "line 11" not in shown
