__version__ = "0.1.0"
"""castlib's version (PEP 440); every result record keeps it as ``castlib_version``."""
