"""Filters: which engines a turn may go to."""
