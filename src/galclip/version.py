"""The package version, in a module of its own so shared modules need not import the package face."""

__version__ = "0.2.0"
