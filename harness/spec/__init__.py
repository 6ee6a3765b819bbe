"""Spec and job loading: the YAML spec as frozen dataclasses, overrides, the job module."""
