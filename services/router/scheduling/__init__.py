"""Routing policy: filters → scorers → picker, built from a declarative profile."""
