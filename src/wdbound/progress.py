"""What the long library calls report while they work.

The library never touches the terminal: ``evaluate``, ``run_table``, ``run_check`` and friends call an
:class:`Observer`, which does nothing by default; the CLI passes one that draws a rich progress bar (or
plain log lines off a terminal) and prints the memory plan.

>>> Observer().hvps(3)  # the default ignores everything
"""

from __future__ import annotations


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
