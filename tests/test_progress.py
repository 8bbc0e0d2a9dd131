"""wdbound.progress: the observer the computations report to, and the bars the CLI and the API draw."""

import wdbound.progress as progress
from wdbound.errors import WdboundError


def test_log_progress_prints_done_total_and_eta_off_a_terminal(capsys):
    log = progress.LogProgress(interval=0.0)
    task = log.add_task("HVPs x.pt", total=100, upper=True)
    log.advance(task, 25)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("[progress] HVPs x.pt: 25/100 at most (25%)") and "ETA at most" in line


def test_bar_observer_counts_hvps_and_reports_failures(capsys):
    log = progress.LogProgress(interval=1e9)
    observer = progress.BarObserver(log)
    observer.items(2)
    observer.start("a.pt", 10)
    observer.hvps(4)
    observer.hvps(3)
    task = log.tasks[observer.task]
    assert task["completed"] == 7 and task["total"] == 10
    observer.done(7)
    assert log.tasks[observer.task]["completed"] == 7
    observer.item("a.pt")
    assert log.tasks[observer.overall]["completed"] == 1
    observer.failed("b.pt", WdboundError("corrupt"))
    assert capsys.readouterr().err.strip() == "error: b.pt: corrupt"


def test_the_default_observer_ignores_everything():
    observer = progress.Observer()
    for call in (lambda: observer.items(3), lambda: observer.start("x", None), lambda: observer.hvps(1),
                 lambda: observer.done(0), lambda: observer.item("x"), lambda: observer.failed("x", None)):
        assert call() is None
