"""s2s: sequence-to-sequence translation on Ray (prepare, train, translate)."""

__version__ = "0.1.0"
