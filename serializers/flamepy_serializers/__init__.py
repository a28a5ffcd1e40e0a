"""Serializer plugins bundled with flamepy. Each registers through the ``flamepy.serializers`` entry point."""
