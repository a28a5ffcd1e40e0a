"""flamepy-transport-tcp: a third-party transport for flamepy, built on flamepy's framed kit.

The entry point names :class:`flamepy_transport_tcp.transport.TcpTransport`; that module is light (plain
sockets and ``flamepy.plugin``), so scanning entry points stays cheap.
"""
