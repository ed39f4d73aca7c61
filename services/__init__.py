"""Switchyard services: engine, router, safety, mesh CLI and what they share (common)."""
