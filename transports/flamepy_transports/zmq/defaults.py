"""The zmq transport's defaults and names, in a module that imports nothing (both its light declaration
and its implementation read them)."""

NAME = "zmq"
TCP = "zmq+tcp"
IPC = "zmq+ipc"
SCHEMES = (TCP, IPC)
IPC_PATH_MAX = 107
"""Longest ipc socket path libzmq accepts on Linux (bytes)."""

DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024 * 1024
DEFAULT_CONNECT_TIMEOUT = 2.0
DEFAULT_HEARTBEAT_IVL_MS = 1000
DEFAULT_HEARTBEAT_TIMEOUT_MS = 3000
DEFAULT_HWM = 1000
DEFAULT_MAX_WORKERS = 32
DEFAULT_MAX_PENDING_CALLS = 1024
