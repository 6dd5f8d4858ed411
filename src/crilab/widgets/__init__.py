"""ipywidgets for the notebooks: the pod-lifecycle panel, the call log, progress.

The panel and progress work against any CRI runtime; the call log needs a
``FakeRuntime`` (only the fake records its calls) and says so.
"""

from .calllog import CallLog, calls_html
from .lifecycle import PRESETS, LifecyclePanel
from .progress import Progress
from .statemachine import state_machine_svg

__all__ = ["PRESETS", "CallLog", "LifecyclePanel", "Progress", "calls_html", "state_machine_svg"]
