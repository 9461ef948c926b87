"""The one error type the pack raises for bad node input."""

from __future__ import annotations

# What is wrong with an input and how to fix it, as two sentences.
Problem = tuple[str, str]


class NodeInputError(ValueError):
    """Bad input to a node: the message names the node, the input, the problem and the fix.

    ComfyUI shows the message in its error dialog, so it is written for the artist.
    """

    def __init__(self, node: str, input_name: str, problem: str, fix: str) -> None:
        self.node = node
        self.input_name = input_name
        super().__init__(f"{node}: input '{input_name}': {problem} Fix: {fix}")


def raise_for(problem: Problem | None, node: str, input_name: str) -> None:
    """Raise a :class:`NodeInputError` for ``problem``; do nothing when it is None."""
    if problem is not None:
        raise NodeInputError(node, input_name, *problem)
