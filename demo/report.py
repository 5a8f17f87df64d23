"""What the demo prints: a rich progress display on a terminal, plain lines otherwise; never a token.

Everything goes through one writer that masks bootstrap tokens (``abcdef.0123456789abcdef``, what a kubeadm
join line carries) whatever printed them. Text from providers and from the commands the demo runs is shown
as literal text (rich ``Text``, control characters escaped), never as markup.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, cast

from rich.console import Console, RenderableType
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

TOKEN_RE = re.compile(r"\b([a-z0-9]{6})\.([a-z0-9]{16})\b")
TOKEN_MASK = "******.****************"  # noqa: S105 (what replaces a token, not one)
INDENT = "      "


def scrub(text: str) -> str:
    """``text`` with every bootstrap token masked."""
    return TOKEN_RE.sub(TOKEN_MASK, text)


def plain(value: object) -> str:
    """``value`` as text that cannot drive the terminal (unprintable characters escaped)."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1] for c in text)


class ScrubbingWriter:
    """A text stream that masks tokens in what is written to it, then passes it on."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(scrub(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return str(getattr(self.stream, "encoding", None) or "utf-8")


class Reporter:
    """Phases and their details. ``interactive``: a live progress display (a terminal), else plain lines
    (``[3/7] approval: done in 4.2 s``) that a log or a test can read."""

    def __init__(self, total: int, stream: IO[str] | None = None, interactive: bool | None = None) -> None:
        out = stream or sys.stdout
        self.interactive = out.isatty() if interactive is None else interactive
        # a text stream as rich and the watch use it (the methods they call)
        self.writer = writer = cast(IO[str], ScrubbingWriter(out))
        if self.interactive:
            self.console = Console(file=writer, markup=False, emoji=False, highlight=False)
        else:
            self.console = Console(
                file=writer, markup=False, emoji=False, highlight=False, no_color=True, width=110,
                force_terminal=False, soft_wrap=True,
            )  # fmt: skip
        self.err = Console(
            file=cast(IO[str], ScrubbingWriter(sys.stderr)),
            markup=False,
            emoji=False,
            highlight=False,
            soft_wrap=True,
        )
        self.total = total
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self._held: list[Text] | None = None
        self.label = ""

    # -- phases --------------------------------------------------------------------------------------------

    def phase_started(self, index: int, name: str, title: str, stands_in_for: str) -> None:
        label = f"[{index}/{self.total}] {name}"
        if self.interactive:
            self.console.print(Text(f"{label}: {title}", style="bold"))
            self.console.print(Text(f"{INDENT}stands in for: {stands_in_for}", style="dim"))
            self.progress = Progress(
                SpinnerColumn(finished_text="done"),
                TextColumn("{task.description}", markup=False),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.label = label
            self.task = self.progress.add_task(f"{label}: {title}", total=1)
        else:
            self.line(f"{label}: {title}")
            self.line(f"{INDENT}stands in for: {stands_in_for}")

    def phase_finished(self, index: int, name: str, seconds: float) -> None:
        self._stop_progress()
        self.line(f"[{index}/{self.total}] {name}: done in {seconds:.1f} s", style="green")

    def phase_failed(self, index: int, name: str, seconds: float, error: str) -> None:
        self._stop_progress()
        self.line(f"[{index}/{self.total}] {name}: FAILED after {seconds:.1f} s: {error}", style="bold red")

    def phase_interrupted(self, index: int, name: str, seconds: float, why: str) -> None:
        self._stop_progress()
        self.line(f"[{index}/{self.total}] {name}: interrupted after {seconds:.1f} s ({why})", style="yellow")

    def _stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.task = None

    def activity(self, text: str) -> None:
        """What the current phase waits for now (the progress line on a terminal; nothing in plain mode)."""
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=f"{self.label}: {' '.join(plain(text).split())}")

    @contextmanager
    def aside(self) -> Iterator[None]:
        """Another program draws on the terminal meanwhile: the live display stopped, detail lines held
        back and printed after it."""
        progress = self.progress
        if progress is not None:
            progress.stop()
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            for text in held:
                self.console.print(text)
            if progress is not None:
                progress.start()

    # -- details -------------------------------------------------------------------------------------------

    def line(self, text: str, style: str = "") -> None:
        line = Text(plain(text), style=style if self.interactive else "")
        if self._held is not None:
            self._held.append(line)
        else:
            self.console.print(line)

    def step(self, text: str, style: str = "") -> None:
        """A detail of the current phase, indented under it."""
        for part in plain(text).splitlines() or [""]:
            self.line(INDENT + part, style)

    def show(self, renderable: RenderableType) -> None:
        self.console.print(renderable)

    def error(self, text: str) -> None:
        self.err.print(Text(plain(text), style="bold red"))


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started
