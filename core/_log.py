"""One logging policy for pocketrec: what reaches the terminal, and what stays quiet.

Everything pocketrec says goes through the standard `logging` module under the
``pocketrec`` logger (``LOGGER``); results go to stdout, logs to stderr. Progress bars
(`progress`) appear only when stderr is a terminal; elsewhere each stage ends in one log
line, so a log file holds no carriage-return spam. The chatter of the runtimes pocketrec
drives (TensorFlow's C++ and absl logs, tf_keras and absl Python logs, LiteRT's INFO
lines) is silenced by `quiet_runtimes` and `filtered_native_stderr`; ``pocketrec
--verbose`` keeps it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

LOGGER = logging.getLogger("pocketrec")

QUIET, NORMAL, VERBOSE = -1, 0, 1

# Lines the runtimes write straight to file descriptor 2, bypassing Python: absl/glog
# records ("I0000 00:00:1796181770.102378 4508 port.cc:153] ..."; F, fatal, is kept),
# absl's warning that it was not initialised, and the TFLite/LiteRT minimal logger
# ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU."). Neither TF_CPP_MIN_LOG_LEVEL
# nor any exported LiteRT function silences the lines printed before absl is initialised
# or LiteRT's INFO lines.
_NATIVE_CHATTER = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.\-]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|INFO: "
    # The TFLite converter's int8 calibration prints its settings.
    rb"|fully_quantize: \d+, inference_type: )"
)
_RUNTIME_MODULES = r"(tensorflow|tf_keras|keras|tensorflow_model_optimization|absl)(\.|$)"

T = TypeVar("T")


class _Formatter(logging.Formatter):
    """Stage lines as they are; other levels say what they are ("warning: ...")."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno == logging.INFO:
            return message
        return f"{record.levelname.lower()}: {message}"


@contextlib.contextmanager
def configured(verbosity: int = NORMAL) -> Iterator[None]:
    """Sends pocketrec's log to stderr at the level ``verbosity`` asks for, for one run.

    ``QUIET``: errors only (results still go to stdout). ``NORMAL``: one line per stage.
    ``VERBOSE``: debug lines too. Below ``VERBOSE`` the runtimes are quietened
    (`quiet_runtimes`). The logger's handlers and level are restored afterwards, so
    in-process callers (tests, notebooks) keep their own configuration.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    previous_level, previous_propagate = LOGGER.level, LOGGER.propagate
    # Our handler prints each record once, also after a library (the TFLite converter)
    # gave the root logger a handler of its own.
    LOGGER.propagate = False
    LOGGER.addHandler(handler)
    LOGGER.setLevel({QUIET: logging.ERROR, NORMAL: logging.INFO}.get(verbosity, logging.DEBUG))
    if verbosity < VERBOSE:
        quiet_runtimes()
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(previous_level)
        LOGGER.propagate = previous_propagate


def quiet_runtimes() -> None:
    """Silences TensorFlow, absl, tf_keras and tfmot chatter; call it before TensorFlow loads.

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` unless the environment already sets it, raises the
    ``tensorflow`` and ``absl`` loggers to ERROR, and ignores the Python warnings those
    libraries issue. The lines they print from C++ before TensorFlow reads the variable,
    and LiteRT's INFO lines, need `filtered_native_stderr`.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    if importlib.util.find_spec("absl") is not None:
        # absl's own logger class must be in place before anyone names the logger.
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    warnings.filterwarnings("ignore", module=_RUNTIME_MODULES)


def is_native_chatter(line: bytes) -> bool:
    """Whether a line written to file descriptor 2 is runtime chatter (see `_NATIVE_CHATTER`)."""
    return _NATIVE_CHATTER.match(line) is not None


@contextlib.contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """Drops runtime chatter written to file descriptor 2 while the block runs.

    C++ code (TensorFlow, XLA, LiteRT) writes to the descriptor, not to `sys.stderr`, so
    the descriptor is pointed at a pipe whose lines are forwarded unless
    `is_native_chatter`; `sys.stderr` (when it is the process's own) keeps writing to the
    real stream, so Python output stays live and a terminal stays a terminal.
    Process-wide: meant for a command-line run, not for a library call.
    """
    sys.stderr.flush()
    try:
        original = os.dup(2)
    except OSError:  # no descriptor 2 (a daemon): nothing to filter
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarder = threading.Thread(
        target=_forward_lines, args=(read_end, original), name="pocketrec-stderr", daemon=True
    )
    forwarder.start()
    own_stderr = sys.stderr is sys.__stderr__ and sys.__stderr__ is not None
    if own_stderr:
        encoding = getattr(sys.__stderr__, "encoding", None) or "utf-8"
        sys.stderr = open(  # noqa: SIM115 - closed in the finally below
            os.dup(original), "w", buffering=1, encoding=encoding, errors="backslashreplace"
        )
    try:
        yield
    finally:
        if own_stderr:
            sys.stderr.close()
            sys.stderr = sys.__stderr__
        if sys.__stderr__ is not None:
            sys.__stderr__.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the forwarder sees EOF
        forwarder.join(timeout=5)
        os.close(original)


def _forward_lines(read_end: int, out: int) -> None:
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not is_native_chatter(line))
            if kept:
                _write_all(out, kept)
    if pending and not is_native_chatter(pending):
        _write_all(out, pending)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def bars_enabled() -> bool:
    """Whether progress bars show: stderr is a terminal and pocketrec is not set above INFO."""
    isatty = getattr(sys.stderr, "isatty", None)
    level = LOGGER.level
    return bool(isatty and isatty()) and (level == logging.NOTSET or level <= logging.INFO)


class Progress(Generic[T]):
    """An iterable that shows a bar on a terminal and logs one line when its stage ends."""

    def __init__(
        self, iterable: Iterable[T], desc: str, total: int | None, level: int, bar: bool
    ) -> None:
        self._iterable, self._desc, self._level = iterable, desc, level
        self._total = total if total is not None else _length(iterable)
        self._postfix: dict[str, Any] = {}
        self._bar: Any = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self._total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True
            )

    def set_postfix(self, **values: Any) -> None:
        """Figures shown beside the bar and at the end of the stage's log line."""
        self._postfix = values
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def __iter__(self) -> Iterator[T]:
        started, done = time.perf_counter(), 0
        try:
            for item in self._iterable:
                yield item
                done += 1
                if self._bar is not None:
                    self._bar.update()
        finally:
            if self._bar is not None:
                self._bar.close()
            figures = "".join(f", {name} {value}" for name, value in self._postfix.items())
            LOGGER.log(
                self._level,
                "%s: %d/%s in %.1f s%s",
                self._desc,
                done,
                self._total if self._total is not None else "?",
                time.perf_counter() - started,
                figures,
            )


def progress(
    iterable: Iterable[T],
    desc: str,
    *,
    total: int | None = None,
    level: int = logging.INFO,
    bar: bool = True,
) -> Progress[T]:
    """Wraps a stage's steps: a tqdm bar on a terminal, and one log line when it ends.

    ``level`` is the level of the closing line (DEBUG when the caller logs its own
    summary); ``bar=False`` never draws a bar.
    """
    return Progress(iterable, desc, total, level, bar=bar and bars_enabled())


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
