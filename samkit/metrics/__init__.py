"""Evaluation metrics, streaming where the data can be large."""

__all__: list[str] = []
