"""The server's compute scheduler: classes paid, private and normal, reserved slots, aging.

`Policy` is the pure core (virtual time, no I/O); `Scheduler` is its trio
wrapper, which a server uses instead of a `trio.CapacityLimiter`:

```python
scheduler = Scheduler(SchedulerConfig(slots=1, reserved_slots=1, aging=2.0))
hidden = await scheduler.run_sync(session.priority, span.forward, hidden, cache)
```

`potluck.scheduler.policy` states and proves the guarantees: a paid step
starts at once while a reserved slot is free, and every task's wait is
bounded whatever arrives after it.
"""

from __future__ import annotations

from potluck.scheduler.adapter import Scheduler
from potluck.scheduler.policy import (
    CLASSES,
    RANKS,
    TICKETED,
    TRANSITIONS,
    ClassStats,
    Policy,
    SchedulerConfig,
    TaskEvent,
    TaskState,
)

__all__ = [
    "CLASSES",
    "RANKS",
    "TICKETED",
    "TRANSITIONS",
    "ClassStats",
    "Policy",
    "Scheduler",
    "SchedulerConfig",
    "TaskEvent",
    "TaskState",
]
