"""Progress on stderr: rich bars on a terminal; plain lines, each task on its own clock, in a log."""

from io import StringIO

from rich.console import Console

from aapp.console import LineProgress, progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def lines(out: StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_a_log_gets_plain_lines_not_a_bar():
    log = Console(file=StringIO(), force_terminal=False)
    assert isinstance(progress(log), LineProgress)
    assert not isinstance(progress(Console(file=StringIO(), force_terminal=True)), LineProgress)


def test_lines_say_each_phase_once_then_counts_every_30_seconds_on_the_phase_clock():
    out, clock = StringIO(), Clock()
    bar = LineProgress(Console(file=out, width=200), every=30, clock=clock)
    passes = bar.add_task("prompt passes", total=520)
    fit = bar.add_task("gate fit, layers", total=None, start=False)
    assert lines(out) == ["prompt passes: started, 0/520"]  # a task not started says nothing yet
    for _ in range(10):  # 10 s: no line
        clock.now += 1
        bar.advance(passes, 8)
    assert len(lines(out)) == 1
    clock.now += 25  # 35 s since the phase began
    bar.advance(passes, 8)
    assert lines(out)[-1] == "prompt passes: 88/520, 0:35"
    clock.now += 100
    bar.advance(passes, 432)
    assert lines(out)[-1] == "prompt passes: done, 520/520 in 2:15"
    clock.now += 60  # an idle minute, then the fit begins: its clock starts there
    bar.start_task(fit)
    bar.update(fit, completed=0, total=30)
    clock.now += 12
    bar.update(fit, completed=30, total=30)
    assert lines(out)[-2:] == ["gate fit, layers: started", "gate fit, layers: done, 30/30 in 0:12"]
    bar.update(fit, completed=30)  # a finished task stays quiet
    assert len(lines(out)) == 5
