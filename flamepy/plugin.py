"""``flamepy.plugin``: the one import point for plugin authors.

Everything a transport or serializer plugin needs: the contracts (``Transport``, ``Channel``, ``Server``,
the handler kinds, ``TransportCapabilities`` and the declarations the runtime reads, ``Serializer``,
``FlameError`` and its codes), ``hookimpl`` for plugins written with hooks, and the kit
(:mod:`flamepy_core.kit`): :class:`FramedTransport`, a base that leaves a new transport only its
``dial`` and ``listen``, the socket links it can use, and the helpers every transport needs.
``docs/plugin-authors.md`` walks through it with the TCP example.
"""

from flamepy_core.contracts import *  # noqa: F403
from flamepy_core.contracts import __all__ as _contracts
from flamepy_core.kit import *  # noqa: F403
from flamepy_core.kit import __all__ as _kit

__all__ = [*_contracts, *_kit]
