"""How an algorithm reports bad input: a :data:`Problem`, which the calling node turns into its message."""

from __future__ import annotations

# What is wrong with an input and how to fix it, as two sentences (nodes/inputs.py raises it).
Problem = tuple[str, str]
