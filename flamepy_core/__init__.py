"""The transport-agnostic core of flamepy.

Layers (see docs/architecture.md): ``contracts`` (hook specs, Protocols, errors) <- ``plugins`` (discovery
and selection) <- ``wire`` (flame.v1 messages) <- ``client`` / ``instance`` / ``engine`` / ``cli``.
Nothing in this package imports a plugin module by name; it asks :mod:`flamepy_core.plugins`.
"""
