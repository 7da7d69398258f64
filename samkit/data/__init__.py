"""Data: synthetic scenes and datasets for tests, examples and learning checks."""

__all__: list[str] = []
