"""The few calls of ComfyUI's HTTP API the server runner makes (:mod:`.servers`), and how their faults are told apart.

- :class:`ServerDown`: the server did not answer (refused, reset, timed out; a gateway's 502, 503 or 504): the
  job goes to another server;
- :class:`JobRefused`: the server refused the prompt (validation) or failed executing it: the job fails, with the
  server's message;
- :class:`BadAnswer`: the server answered, but not as ComfyUI does (another error status such as a failing
  ``/view``, malformed JSON, an image path outside the output folder): the job fails, with what was wrong;
- :class:`ServerError` (of which :class:`BadAnswer` is one): a server that cannot take the run's jobs (a login in
  front of it; before any job, the checks of ``/object_info``).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

GATEWAY = (502, 503, 504)  # a proxy in front of a server that does not answer


class ServerError(RuntimeError):
    """A server that cannot take the run's jobs: the message names it, the problem and the fix."""


class BadAnswer(ServerError):
    """A server answered, but not as ComfyUI does (an error status, malformed JSON): the message names the server
    and the request."""


class ServerDown(ConnectionError):
    """A server stopped answering (refused, reset, timed out)."""


class JobRefused(RuntimeError):
    """The server refused the prompt or failed executing it: the job fails, with the server's message."""


class Client:
    """The few calls of ComfyUI's HTTP API the runner makes, on one server."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def __repr__(self) -> str:
        return self.url

    def request(self, path: str, body: bytes | None = None, headers: dict | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, headers=headers or {},
                                     method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as answer:
                return answer.read()
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            if error.code in (401, 403):
                raise ServerError(f"server {self.url} answers {error.code} ({error.reason}): a login (an "
                                  "authenticating proxy) stands in front of it. Fix: give the URL of the ComfyUI "
                                  "server itself, reachable without a login.") from None
            if error.code == 400 and path == "/prompt":
                raise JobRefused(refusal(text)) from None
            if error.code in GATEWAY:
                raise ServerDown(f"{self.url}{path} answered {error.code}: {text[:300]}") from None
            raise BadAnswer(f"server {self.url}: {path} answered {error.code} ({error.reason}): {text[:300]}") \
                from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as error:
            raise ServerDown(f"{self.url}: {getattr(error, 'reason', error)}") from None

    def json(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        return self.decode(self.request(path, data, {"Content-Type": "application/json"} if data else None), path)

    def decode(self, text: bytes, path: str) -> Any:
        """The JSON of an answer to ``path``; malformed, a :class:`BadAnswer`."""
        try:
            return json.loads(text)
        except ValueError as error:
            raise BadAnswer(f"server {self.url}: {path} answered malformed JSON ({error}): "
                            f"{text[:200].decode(errors='replace')!r}") from None

    def upload_image(self, path: Path, name: str) -> str:
        """Upload ``path`` to the server's input folder as ``name``; return the name LoadImage takes."""
        boundary = uuid.uuid4().hex
        parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n").encode(), path.read_bytes(), b"\r\n"]
        for key, value in (("overwrite", "true"), ("type", "input")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f"--{boundary}--\r\n".encode())
        answer = self.decode(self.request("/upload/image", b"".join(parts),
                                          {"Content-Type": f"multipart/form-data; boundary={boundary}"}),
                             "/upload/image")
        return answer["name"] if not answer.get("subfolder") else f"{answer['subfolder']}/{answer['name']}"

    def queue(self, prompt: dict, client_id: str) -> str:
        return self.json("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.json(f"/history/{prompt_id}").get(prompt_id)

    def queued(self, prompt_id: str) -> bool:
        """Whether the server's queue holds the prompt (running or pending)."""
        answer = self.json("/queue")
        return any(len(item) > 1 and item[1] == prompt_id
                   for item in (*answer.get("queue_running", []), *answer.get("queue_pending", [])))

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        return self.request(f"/view?{query}")

    def image_path(self, image: dict) -> PurePosixPath:
        """Where a saved image goes under the output folder: its subfolder and name, which must stay inside."""
        path = PurePosixPath(str(image.get("subfolder", "")).replace("\\", "/")) / str(image.get("filename", ""))
        if path.is_absolute() or ".." in path.parts or not image.get("filename"):
            raise BadAnswer(f"server {self.url} names an image outside the output folder ({path}). Fix: run "
                            "ComfyUI's own server there.")
        return path


def refusal(text: str) -> str:
    """ComfyUI's answer to a refused prompt, as one message (its node errors' details)."""
    try:
        answer = json.loads(text)
    except ValueError:
        return text[:500]
    details = [f"{e.get('message', '')}: {e.get('details', '')}" for node in answer.get("node_errors", {}).values()
               for e in node.get("errors", [])]
    error = answer.get("error", {})
    return "; ".join(details) or f"{error.get('message', '')}: {error.get('details', '')}".strip(": ")


def failure(entry: dict) -> str:
    """The execution error of a history entry, as one message."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message', '').strip()}"
    return f"the server reports status {entry.get('status', {}).get('status_str')}"


def object_info(client: Client) -> dict:
    """The server's node definitions; a server that does not answer as ComfyUI does is a :class:`ServerError`."""
    try:
        return client.json("/object_info")
    except ServerDown as error:
        raise ServerError(f"server {client.url} does not answer ({error}). Fix: start it, or check the URL "
                          "(e.g. http://127.0.0.1:8188).") from None
    except BadAnswer as error:
        raise ServerError(f"server {client.url} does not answer as ComfyUI does ({error}). Fix: check the URL "
                          "(e.g. http://127.0.0.1:8188) and the server's log.") from None


class NodeDefinition:
    """A node definition read from a server's ``/object_info``, for the UI-to-API conversion (as ComfyUI's node
    classes: ``INPUT_TYPES()``)."""

    def __init__(self, info: dict) -> None:
        self.info = info

    def INPUT_TYPES(self) -> dict:  # noqa: N802  (ComfyUI's name)
        return self.info["input"]


def node_definitions(info: dict) -> dict[str, NodeDefinition]:
    """A server's ``/object_info`` as ComfyUI's ``NODE_CLASS_MAPPINGS`` reads (for ``ui_to_prompt``)."""
    return {kind: NodeDefinition(value) for kind, value in info.items()}


def missing(prompt: dict, info: dict) -> list[str]:
    """What a server lacks for ``prompt``, by its ``/object_info``: node types, and files or choices of combo inputs."""
    out = []
    for node in prompt.values():
        kind, title = node["class_type"], node.get("_meta", {}).get("title", node["class_type"])
        if kind not in info:
            out.append(f"node type {kind} ('{title}'; is the pack installed there?)")
            continue
        specs = {**info[kind]["input"].get("required", {}), **info[kind]["input"].get("optional", {})}
        for name, value in node["inputs"].items():
            spec = specs.get(name)
            if not spec or not isinstance(value, str):
                continue
            options = spec[0] if isinstance(spec[0], list) else (spec[1].get("options") if spec[0] == "COMBO" and
                                                                   len(spec) > 1 else None)
            if options is not None and value not in options:
                out.append(f"'{value}' ({title}: {name})")
    return out
