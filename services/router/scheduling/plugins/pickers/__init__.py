"""Pickers: rank the scored engines."""
