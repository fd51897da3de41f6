"""Backbones, heads and foreign-checkpoint loading."""
