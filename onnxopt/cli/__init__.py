"""Command-line interface: a thin click layer over the library (one module per command)."""
