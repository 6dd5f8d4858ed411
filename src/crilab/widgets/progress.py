"""Progress for long work (thousands of calls), as a widget that threads may update."""

from __future__ import annotations

import ipywidgets as w


class Progress(w.HBox):
    """A progress bar usable as ``progress=`` callback: ``Progress(...)(done, total)``.

    Only widget values change, so it is safe to call from worker threads.
    """

    def __init__(self, description: str = "calls") -> None:
        self.bar = w.IntProgress(value=0, min=0, max=1, description=description)
        self.label = w.Label("")
        super().__init__([self.bar, self.label])

    def __call__(self, done: int, total: int) -> None:
        self.bar.max = max(total, 1)
        self.bar.value = min(done, total)
        self.label.value = f"{done}/{total}"
        self.bar.bar_style = "success" if done >= total else ""
