"""Generic building blocks; they import neither upstream library."""

__all__: list[str] = []
