"""The release: one owner, read by the package, the reports and the CLI."""

__version__ = "0.2.0"
