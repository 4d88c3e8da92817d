"""Moved to :mod:`peft_vision_ext.families.tasks` (data: the task families register with the registry);
re-exported here."""

from ..families.tasks import (
    task_families_markdown,
)

__all__ = ["task_families_markdown"]
