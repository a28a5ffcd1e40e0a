"""``flamepy.cache``: the object cache functions and ``ObjectRef``."""

from flamepy_core.client.objects import delete_objects, get_object, patch_object, put_object, update_object
from flamepy_core.objref import ObjectRef

__all__ = ["ObjectRef", "delete_objects", "get_object", "patch_object", "put_object", "update_object"]
