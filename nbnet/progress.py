"""Keras-style progress output: a live bar on a terminal, one line per epoch otherwise."""

import sys
import time

BAR_WIDTH = 20


def format_duration(seconds):
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    return f"{int(round(seconds))}s"


def format_step_time(seconds):
    return f"{seconds * 1e3:.0f}ms/step" if seconds >= 1e-3 else f"{seconds * 1e6:.0f}us/step"


def format_logs(logs):
    return "".join(f" - {key}: {value:.4f}" for key, value in logs.items())


class ProgressBar:
    """``verbose=1``: live bar (when ``stream`` is a TTY) and a final line per epoch;
    ``verbose=2``: the final line only; ``verbose=0``: silent."""

    def __init__(self, total_steps, verbose=1, stream=None):
        verbose = 1 if verbose == "auto" else int(verbose)  # Keras's 'auto' is 1 here
        self.total, self.verbose = total_steps, verbose
        self.stream = stream or sys.stdout
        self.live = verbose == 1 and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, step, logs):
        if not self.live:
            return
        now = time.perf_counter()
        if (self.total is None or step < self.total) and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        elapsed = now - self.start
        if self.total is None:  # a batch source of unknown length, as Keras shows it
            self.stream.write(f"\r{step}/Unknown {format_duration(elapsed)}{format_logs(logs)}\x1b[K")
            self.stream.flush()
            return
        done = int(BAR_WIDTH * step / self.total)
        bar = "━" * done + (" " if done < BAR_WIDTH else "") + "─" * max(BAR_WIDTH - done - 1, 0)
        eta = elapsed / step * (self.total - step) if step else 0.0
        timing = f"ETA {format_duration(eta)}" if step < self.total else format_duration(elapsed)
        self.stream.write(f"\r{step}/{self.total} {bar[:BAR_WIDTH]} {timing}{format_logs(logs)}\x1b[K")
        self.stream.flush()

    def finish(self, logs):
        if self.verbose == 0:
            return
        elapsed = time.perf_counter() - self.start
        line = (f"{self.total}/{self.total} {'━' * BAR_WIDTH} {format_duration(elapsed)} "
                f"{format_step_time(elapsed / max(self.total, 1))}{format_logs(logs)}")
        self.stream.write(("\r" if self.live else "") + line + ("\x1b[K" if self.live else "") + "\n")
        self.stream.flush()
