"""Daino: DINO turned semi-supervised (teacher targets + labels, one cross-entropy)."""
