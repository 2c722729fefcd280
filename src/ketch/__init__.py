"""ketch: the container ecosystem in one Python codebase."""

__version__ = "0.1.0"
