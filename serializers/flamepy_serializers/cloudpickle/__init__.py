"""The cloudpickle serializer: flamepy's default, byte-compatible with Flame's own service layer."""
