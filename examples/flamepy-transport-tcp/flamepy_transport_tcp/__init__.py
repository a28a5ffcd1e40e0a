"""flamepy-transport-tcp: a plain-TCP transport for flamepy (``tcp://HOST:PORT``).

The worked example of a third-party transport plugin: it is installed on its own, found through the
``flamepy.transports`` entry point and proven by flamepy's conformance suite. This package is kept
light on purpose: flamepy imports :mod:`flamepy_transport_tcp.plugin` while scanning entry points, and
the implementation (:mod:`flamepy_transport_tcp.transport`) only when a ``tcp://`` endpoint is used.
"""

__version__ = "0.1.0"
