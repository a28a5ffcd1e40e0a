"""``flamepy.tools``: remote Python and shell snippets (``Sandbox``) on the built-in ``flmexec`` application."""

from flamepy.tools.sandbox import Sandbox, SandboxAttr, SandboxOutput

__all__ = ["Sandbox", "SandboxAttr", "SandboxOutput"]
