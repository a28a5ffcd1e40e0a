"""Flame's built-in applications, as service processes written with this SDK.

``flmping`` (:mod:`.flmping`) answers what it gets, ``flmexec`` (:mod:`.flmexec`) runs Python and shell
snippets, and ``flmrun`` is :mod:`flamepy.runner.runpy`, the generic service behind ``Runner``. The
server registers all three on a fresh store (:mod:`flamepy_core.engine.builtins`).
"""
