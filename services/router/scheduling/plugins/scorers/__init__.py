"""Scorers: how good each surviving engine is for a turn, in [0, 1]."""
