"""``flamepy.util``: small helpers."""

from flamepy_core.model import short_name

__all__ = ["short_name"]
