"""``python -m flamepy_core.flight``: the standalone Flame-compatible object cache, as a command.

The Flight code lives beside the layer that uses it: the rules and the shared protocol in
:mod:`flamepy_core.wire.flight`, the client half in :mod:`flamepy_core.client.flight`, the server half in
:mod:`flamepy_core.engine.flight`. This package holds only the command (``__main__``), which sits above
the engine like ``flmctl``.
"""
