"""What the long library calls report while they work.

The computations never touch the terminal: ``evaluate``, ``run_table``, ``run_check`` and friends call an
:class:`Observer`, which does nothing by default. :class:`BarObserver` draws a rich progress bar on stderr (or
plain log lines off a terminal) and prints the memory plan: the CLI and the Python API (``progress=True``)
both use it.

>>> Observer().hvps(3)  # the default ignores everything
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Off a terminal (pipes, CI logs) rich would wrap at 80 columns; tables read better wider.
console = Console() if Console().is_terminal else Console(width=160)
err_console = Console(stderr=True)


class Observer:
    """Callbacks of a long computation; every method is optional (the defaults do nothing)."""

    def items(self, total: int) -> None:
        """A batch of ``total`` items (checkpoints of a table or check) begins."""

    def plan(self, plan) -> None:
        """The memory plan (:class:`wdbound.memory.MemoryPlan`), before the first HVP of an analysis."""

    def start(self, label: str, total: int | None) -> None:
        """An analysis of ``label`` begins; ``total`` is an upper estimate of its HVPs."""

    def hvps(self, count: int) -> None:
        """``count`` more HVPs were spent."""

    def done(self, hvps: int) -> None:
        """The analysis ended after ``hvps`` HVPs in this process (0: everything came from the cache)."""

    def item(self, label: str) -> None:
        """One item of a batch (a checkpoint of a table or check, a layer) finished."""

    def failed(self, label: str, error) -> None:
        """An item of a batch failed with a one-line :class:`~wdbound.errors.WdboundError`; the batch goes on."""


def progress_bar():
    """rich's bar on a terminal; elsewhere (log files, CI, nohup) a :class:`LogProgress` line every ~10 s."""
    if not err_console.is_terminal:
        return LogProgress()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, transient=False)


class LogProgress:
    """Progress for a stderr that is not a terminal: one plain line per task at most every ``interval``
    seconds (``$WDBOUND_PROGRESS_INTERVAL``, default 10): done / planned (HVPs: at most), elapsed, ETA. The
    subset of rich's ``Progress`` the commands use."""

    def __init__(self, interval: float | None = None) -> None:
        import os
        import time

        self.clock = time.monotonic
        self.interval = float(os.environ.get("WDBOUND_PROGRESS_INTERVAL", 10.0)) if interval is None else interval
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total=None, info: str = "", **_fields) -> int:
        """Start a task; returns its id."""
        now = self.clock()
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "completed": 0, "start": now,
                                       "last": now, "info": info, "upper": bool(_fields.get("upper"))}
        return len(self.tasks) - 1

    def advance(self, task: int, amount: float = 1) -> None:
        """Add ``amount`` to a task's progress."""
        self.update(task, completed=self.tasks[task]["completed"] + amount)

    def update(self, task: int, *, total=None, completed=None, info: str | None = None, **_fields) -> None:
        """Set a task's total / progress / info; logs a line when ``interval`` seconds have passed."""
        state = self.tasks[task]
        if total is not None:
            state["total"] = total
        if completed is not None:
            state["completed"] = completed
        if info is not None:
            state["info"] = info
        now = self.clock()
        if now - state["last"] >= self.interval:
            state["last"] = now
            self._log(state, now)

    def _log(self, state: dict, now: float) -> None:
        elapsed, done, total = now - state["start"], state["completed"], state["total"]
        # An HVP total is an upper estimate (the single pass and the trace stop at their targets): so is its ETA.
        bound = " at most" if state["upper"] else ""
        planned = (f"{done:g}/{total:g}{bound} ({100 * done / total:.0f}%)" if total else f"{done:g}")
        eta = (f", ETA{bound} {_clock(elapsed * (total - done) / done)}" if total and 0 < done < total else "")
        err_console.print(f"[progress] {state['description']}: {planned}, elapsed {_clock(elapsed)}{eta}"
                          + (f" ({state['info']})" if state["info"] else ""), highlight=False, markup=False,
                          soft_wrap=True)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def show_plan(plan) -> None:
    """The memory plan, on stderr before the first HVP."""
    err_console.print(plan.summary(), highlight=False, markup=False, soft_wrap=True)



class BarObserver(Observer):
    """The library's progress drawn on a rich bar (or ``[progress]`` lines off a terminal), the memory plan on
    stderr, failed items as one error line each."""

    def __init__(self, bar, items_label: str = "checkpoints", on_failed=None) -> None:
        self.bar, self.items_label, self.on_failed = bar, items_label, on_failed
        self.task = self.overall = None
        self.planned: tuple[str, int | None] = ("", None)

    def items(self, total: int) -> None:
        self.overall = self.bar.add_task(self.items_label, total=total, info="")

    def plan(self, plan) -> None:
        show_plan(plan)
        label, total = self.planned
        if total:
            err_console.print(f"HVP plan for {label}: at most {total:,} Hessian-vector products",
                              highlight=False, markup=False, soft_wrap=True)

    def start(self, label: str, total: int | None) -> None:
        self.planned = (label, total)
        self.task = self.bar.add_task(f"HVPs {label}", total=total, info="", upper=True)

    def hvps(self, count: int) -> None:
        self.bar.advance(self.task, count)

    def done(self, hvps: int) -> None:
        self.bar.update(self.task, total=max(hvps, 1), completed=max(hvps, 1), info="cached" if hvps == 0 else "")

    def item(self, label: str) -> None:
        if self.overall is not None:
            self.bar.advance(self.overall)
        elif self.task is not None:
            self.bar.update(self.task, info=label)

    def failed(self, label: str, error) -> None:
        from .errors import about

        if self.on_failed is not None:  # the CLI's one-line error, with the flag that fixes it
            self.on_failed(about(label, error))
            return
        err_console.print(f"error: {about(label, error)}", highlight=False, soft_wrap=True, markup=False)


