"""``flamepy.util``: small helpers. ``short_name`` is Flame's; ``progress`` is flamepy's."""

from flamepy_core.model import short_name
from flamepy_core.progress import progress

__all__ = ["progress", "short_name"]
