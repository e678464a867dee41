"""What ``python -m rlinf.train`` shows on the console, and the run's log file that holds the rest.

Why: a run is a dozen interpreters (the driver, Ray's daemons, Ray workers, SGLang's scheduler and
detokenizer) and every upstream prints: Ray's start-up, SGLang's full ServerArgs and a line per
prefill batch, Megatron's timers, RLinf's progress bar. Ray forwards each worker's stdout and
stderr to the driver (``log_to_driver``), so all of it lands on the driver's two file descriptors.
A first run of ``make demo`` printed 576 lines there, the per-step table buried among them.

:class:`Console` points the driver's fd 1 and 2 at ``<run dir>/train.log`` (at the descriptor
level, so Ray's log monitor thread, RLinf's tqdm, Python's logging and the Ray daemons the driver
starts all write there, in order, and a hard crash loses nothing), and keeps a copy of the
original descriptors for what a person wants to see: one line of set-up progress, the ``[grpo]``
table, where the outputs went, and, on failure, the lines of the log that say why.
``verbose`` (``--verbose`` or ``pangu.report.verbose: true``) sends the log to the console too
(through ``tee``), as before.

Ray's own switches were measured against this and kept out: ``log_to_driver=False`` leaves the
workers' lines in Ray's session folder (one file per process, deleted with the run's Ray temp
dir), and an SGLang/Ray log level set in the workers would also hide the lines a failure needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, TextIO

LOG_NAME = "train.log"
PREFIX = "[rlinf-pangu]"
#: A log line that may say why a run failed (the tail alone is often a wall of progress bars).
CAUSE = re.compile(r"Error|Exception|Traceback|OOM|[Kk]illed|Failed|failed|FATAL|Aborted|Segmentation")
#: ... except these, which every healthy run prints (SGLang's optional model imports, INFO lines
#: that name an import fallback, Python warnings).
NOT_A_CAUSE = re.compile(r"Ignore import error|ErrorHandler|error_on_|warnings\.warn|Warning:|\bINFO\b")
#: Ray colours the worker prefixes of forwarded lines.
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failure_lines(log_text: str, causes: int = 25, tail: int = 12) -> list[str]:
    """The lines of a run's log that say why it failed: the last cause-like lines, then the tail.

    Progress bars (carriage-return updates, ``it/s]``) are dropped first; each list keeps its
    last entries, and a tail line already shown as a cause is not repeated.
    """
    lines = [ANSI.sub("", ln).rstrip() for ln in log_text.replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln.strip() and "it/s]" not in ln and "s/it]" not in ln]
    found = [ln for ln in lines if CAUSE.search(ln) and not NOT_A_CAUSE.search(ln)]
    found = list(dict.fromkeys(found))[-causes:]  # unique, in order, the last ones
    last = [ln for ln in lines[-tail:] if ln not in found]
    return found + (["..."] if found and last else []) + last


def _short(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


class Console:
    """The driver's console: quiet by default, everything else in ``run_dir/train.log``."""

    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.log_path: Path | None = None
        self._out: TextIO = sys.stdout
        self._err: TextIO = sys.stderr
        self._saved: tuple[int, int] | None = None
        self._tee: subprocess.Popen | None = None
        self._t0 = time.monotonic()
        self._setup_open = False

    # -- the log file ------------------------------------------------------------------

    def start(self, run_dir: Path) -> Path:
        """From now on, fd 1 and 2 of this process (and of every process it starts) go to the log."""
        if self._saved is not None:
            return self.log_path
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = run_dir / LOG_NAME
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        target = log_fd
        if self.verbose:  # tee keeps writing even if this process dies mid-line
            self._tee = subprocess.Popen(["tee", "-a", str(self.log_path)], stdin=subprocess.PIPE, stdout=saved[0])
            target = self._tee.stdin.fileno()
        os.dup2(target, 1)
        os.dup2(target, 2)
        os.close(log_fd)
        self._saved = saved
        self._out = os.fdopen(os.dup(saved[0]), "w", buffering=1)
        self._err = os.fdopen(os.dup(saved[1]), "w", buffering=1)
        return self.log_path

    def stop(self, keep_log: bool = False) -> None:
        """End of the run: the console is closed; fd 1 and 2 go back to it, or, with ``keep_log``
        (the driver's exit), stay on the log, so that what upstream prints while the interpreter
        winds down (RLinf's progress bar closing, Ray's shutdown) does not reach the console."""
        if self._saved is None:
            return
        self._end_setup_line()
        sys.stdout.flush()
        sys.stderr.flush()
        if not keep_log:
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = None
        if self._tee is not None and not keep_log:
            self._tee.stdin.close()
            self._tee.wait(timeout=30)
            self._tee = None
        for stream in (self._out, self._err):
            with contextlib.suppress(OSError):
                stream.close()
        self._out, self._err = sys.stdout, sys.stderr

    # -- what a person sees ------------------------------------------------------------

    def _write(self, stream: TextIO, text: str, end: str = "\n") -> None:
        """``text`` on the console and, in quiet mode, in the log too (the log stays complete)."""
        if self._saved is not None and not self.verbose:
            print(text, end=end, file=sys.stdout, flush=True)
        target = sys.stdout if (self._saved is not None and self.verbose) else stream
        print(text, end=end, file=target, flush=True)

    def setup(self, phase: str) -> None:
        """One line of set-up progress: each phase is appended to it as it starts."""
        if self.verbose or self._saved is None:
            self._write(self._out, f"{PREFIX} setup: {phase}")
            return
        if not self._setup_open:
            self._out.write(f"{PREFIX} setup:")
            self._setup_open = True
        self._out.write(f" {phase} ·")
        self._out.flush()
        print(f"{PREFIX} setup: {phase}", file=sys.stdout, flush=True)

    def setup_done(self) -> None:
        msg = f"ready in {time.monotonic() - self._t0:.0f} s"
        if self._setup_open:
            self._out.write(f" {msg}\n")
            self._out.flush()
            self._setup_open = False
            print(f"{PREFIX} setup: {msg}", file=sys.stdout, flush=True)
        else:
            self._write(self._out, f"{PREFIX} setup: {msg}")

    def _end_setup_line(self) -> None:
        if self._setup_open:
            self._out.write("\n")
            self._out.flush()
            self._setup_open = False

    def line(self, text: str) -> None:
        self._end_setup_line()
        self._write(self._out, text)

    def error(self, text: str) -> None:
        self._end_setup_line()
        self._write(self._err, text)

    def where(self, what: str, paths: Iterable[Path]) -> None:
        self.line(f"{PREFIX} {what}: " + "  ".join(_short(p) for p in paths))

    def failure(self, exc: BaseException) -> None:
        """The exception, then the log lines that say why (the log may hold a worker's traceback)."""
        self._end_setup_line()
        sys.stdout.flush()
        sys.stderr.flush()
        elapsed = time.monotonic() - self._t0
        text = ""
        if self.log_path is not None and not self.verbose:
            with contextlib.suppress(OSError):
                text = self.log_path.read_text(errors="replace")  # before this summary is added to it
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        self.error(f"{PREFIX} failed after {elapsed:.0f} s: {type(exc).__name__}: {first}")
        if not text:
            return
        self.error(f"{PREFIX} why, from {_short(self.log_path)}:")
        for ln in failure_lines(text):
            self.error(f"  {ln[:400]}")
        self.error(f"{PREFIX} full log: {_short(self.log_path)} (--verbose shows it live)")
