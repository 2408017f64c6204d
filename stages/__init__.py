"""Thin DVC stage entry points (`python -m stages.<name>`): parse paths, call one zerovlm function."""
