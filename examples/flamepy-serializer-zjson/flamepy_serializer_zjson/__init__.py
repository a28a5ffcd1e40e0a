"""zlib-compressed JSON, a flamepy serializer plugin (entry point ``zjson`` in ``flamepy.serializers``)."""
