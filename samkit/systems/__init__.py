"""Thin assemblies of the published systems: a config, a builder and the module."""

__all__: list[str] = []
