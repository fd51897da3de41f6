"""Supervised-only baseline: the labeled half of Suave, trained by the same engine."""
