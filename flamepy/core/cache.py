"""``flamepy.core.cache``: the object cache — values (put/get/update/patch/delete) and files (upload/download)."""

from flamepy_core.client.files import download_object, upload_object
from flamepy_core.client.objects import delete_objects, get_object, patch_object, put_object, update_object
from flamepy_core.objref import WILDCARD_SESSION, ObjectKey, ObjectRef

__all__ = [
    "WILDCARD_SESSION",
    "ObjectKey",
    "ObjectRef",
    "delete_objects",
    "download_object",
    "get_object",
    "patch_object",
    "put_object",
    "update_object",
    "upload_object",
]
