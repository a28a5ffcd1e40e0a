"""The gRPC transport's defaults and names, in a module that imports nothing (both its light declaration
and its implementation read them)."""

NAME = "grpc"
TCP_SCHEME = "grpc"
UNIX_SCHEME = "unix"
TLS_SCHEMES = ("grpcs", "https")
"""Endpoints served and dialled with TLS (Flame's rule: ``https://`` means TLS)."""
SCHEMES = ("grpc", "http", "unix", "grpcs", "https")
UNIX_PATH_MAX = 100
"""Longest unix-socket path used for a local endpoint (the OS allows 107 bytes; gRPC adds its prefix)."""

DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
GRPC_MAX_MESSAGE_SIZE = 2**31 - 1
"""gRPC message limits are signed 32-bit."""
DEFAULT_KEEPALIVE_TIME_MS = 30_000
DEFAULT_KEEPALIVE_TIMEOUT_MS = 10_000
DEFAULT_MAX_WORKERS = 32
