"""Masks of Layout-and-Retouch: the cross-attention mask M^c (and, later, the adaptive mask)."""
