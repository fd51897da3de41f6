"""Suave: SwAV's swapped prediction with the prototypes as class prototypes, plus labels."""
