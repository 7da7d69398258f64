"""Backbones: the only place that reaches into segment_anything and open_clip."""

__all__: list[str] = []
