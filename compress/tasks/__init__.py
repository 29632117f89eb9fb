"""Tasks (the TASKS registry): what a model's outputs mean, how it learns, how it is scored.

The pipeline asks the task, never branches on its name: a task supplies the training loss, the
distillation term, the metrics over a split's outputs (whichever runtime produced them), and the
parity of two runtimes' outputs.
"""

from compress.tasks import classification, detection  # noqa: F401  (registers the tasks)
from compress.tasks._base import TASKS, Task

__all__ = ["TASKS", "Task"]
