"""Executing an API prompt with ComfyUI's own validation and executor, without the web server."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from .. import host_api

logger = logging.getLogger(__name__)


class PromptError(RuntimeError):
    """ComfyUI rejected or failed a prompt; the message holds its errors."""


class _Server:
    """The few members of ComfyUI's server that the executor uses, without a network."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


def prompt_executor():
    """ComfyUI's ``execution.PromptExecutor`` for this process (no server): pass it to :func:`execute` to keep its
    caches (the loaded models) between prompts."""
    return host_api.prompt_executor(_Server())


def validate(prompt: dict[str, dict[str, Any]]) -> list[str]:
    """Validate with ComfyUI's ``execution.validate_prompt``; return the output node ids to run."""
    import execution

    ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    if not ok:
        raise PromptError(f"ComfyUI rejected the prompt: {error}; node errors: {node_errors}")
    return outputs


def execute(prompt: dict[str, dict[str, Any]], executor=None) -> dict[str, Any]:
    """Validate and execute ``prompt``; return the UI outputs per node (as the history holds them).

    Pass an executor (:func:`prompt_executor`) to keep its caches between prompts.
    """
    outputs = validate(prompt)
    if executor is None:
        executor = prompt_executor()
    executor.execute(prompt, str(uuid.uuid4()), {}, outputs)
    if not executor.success:
        errors = [data for event, data in executor.status_messages if event == "execution_error"]
        raise PromptError(f"ComfyUI failed to execute the prompt: {errors}")
    return executor.history_result["outputs"]
