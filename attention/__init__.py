"""Attention patches of Layout-and-Retouch stage 2: multi-source swap and cross-attention capture."""
