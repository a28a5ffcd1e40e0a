"""Transport plugins bundled with flamepy. Each registers through the ``flamepy.transports`` entry point."""
