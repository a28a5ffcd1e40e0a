"""Clients of the runtime over any channel: the Frontend connection, core sessions, the object cache, and
finding (or starting) the local server."""
