"""The driver's console (rlinf_pangu.console): quiet by default, everything upstream prints in the
run's train.log, and on failure the log lines that say why. Each case runs in a fresh interpreter,
since the console takes over file descriptors 1 and 2 of its process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from rlinf_pangu.console import failure_lines

SCRIPT = """
import os, subprocess, sys
from pathlib import Path
from rlinf_pangu.console import Console
c = Console(verbose={verbose})
c.start(Path(sys.argv[1]))
c.setup("config")
print("upstream print in the driver")
print("upstream warning", file=sys.stderr)
subprocess.run(["sh", "-c", "echo a child process line; echo a child stderr line >&2"])
c.setup("workers")
c.setup_done()
c.line("[grpo] step 1 row")
{tail}
"""


def _run(tmp_path: Path, verbose: bool = False, tail: str = "c.stop()") -> tuple[subprocess.CompletedProcess, str]:
    code = textwrap.dedent(SCRIPT.format(verbose=verbose, tail=tail))
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    return p, (tmp_path / "train.log").read_text()


def test_quiet_console_shows_only_progress_and_rows_and_the_log_keeps_everything(tmp_path):
    p, log = _run(tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("[rlinf-pangu] setup: config · workers · ready in")
    assert lines[1] == "[grpo] step 1 row"
    assert p.stderr == ""
    for text in ("upstream print in the driver", "upstream warning", "a child process line", "a child stderr line",
                 "[grpo] step 1 row", "setup: config"):
        assert text in log, text


def test_verbose_console_shows_everything_and_still_writes_the_log(tmp_path):
    p, log = _run(tmp_path, verbose=True)
    assert p.returncode == 0, p.stderr
    for text in ("upstream print in the driver", "upstream warning", "a child process line", "[grpo] step 1 row"):
        assert text in p.stdout, text
        assert text in log, text


def test_failure_prints_the_lines_that_say_why(tmp_path):
    tail = ("print('Traceback (most recent call last):'); print('ValueError: the real cause in a worker')\n"
            "c.failure(SystemExit(-1)); c.stop(); sys.exit(1)")
    p, log = _run(tmp_path, tail=tail)
    assert p.returncode == 1
    assert "failed after" in p.stderr and "SystemExit" in p.stderr
    assert "ValueError: the real cause in a worker" in p.stderr
    assert "train.log" in p.stderr
    assert "the real cause" in log


def test_failure_lines_skip_progress_bars_and_keep_the_last_causes():
    log = "\n".join(
        ["ok line"] * 5
        + ["Global Step:  50%|#####     | 1/2 [00:10<00:10, 10.0s/it]"]
        + [f"RuntimeError: cause {i}" for i in range(40)]
        + ["Loading: 100%|####| 81/81 [00:00<00:00, 33933.14it/s]", "last words"]
    )
    out = failure_lines(log, causes=5, tail=3)
    assert out[:5] == [f"RuntimeError: cause {i}" for i in range(35, 40)]
    assert out[-1] == "last words"
    assert not any("it/s]" in ln or "s/it]" in ln for ln in out)


def test_the_loop_line_counts_the_steps_this_process_ran():
    from rlinf_pangu.train import steps_done

    assert steps_done(0, 12) == "12 GRPO steps"
    # RLinf's counter starts at the checkpoint's step after a resume (on an H100 the resumed run of 4 steps
    # printed "6 GRPO steps": docs/runs/gpu-h100-2026-12-07-resume)
    assert steps_done(2, 6) == "4 GRPO steps (3-6, resumed at step 2)"
