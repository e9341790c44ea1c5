"""The package version, in its own module so that submodules can import it
without importing the package ``__init__`` (which imports them)."""

__version__ = "0.1.0"
