"""The HTTP side: routing of the Gemini API paths, API-key checks, JSON and streamed answers.

Stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 keep-alive; every answer has a Content-Length.
"""

from __future__ import annotations

import json
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, cast
from urllib.parse import parse_qs, urlsplit

from pipeline.emulator import models, vertex
from pipeline.emulator.batches import Batches
from pipeline.emulator.schema import Schema
from pipeline.emulator.state import State
from pipeline.emulator.tokens import count_tokens
from pipeline.emulator.wire import ApiError, bad_request, injected, model_missing, pick

VERSION = re.compile(r"^v\d+(alpha|beta)?\d*$")
UNREGISTERED = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
KEY_INVALID = [
    {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID",
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"},
    }
]
SEND_BYTES = 1 << 20
MODEL_METHODS = {
    "batchGenerateContent": "create",
    "asyncBatchEmbedContent": "create_embeddings",
    "countTokens": "count_tokens",
}
JWKS_PATH = "/.well-known/jwks.json"


class EmulatorServer(ThreadingHTTPServer):
    """The server; handlers reach the shared state through it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        state: State,
        batches: Batches,
        vertex_jobs: vertex.VertexJobs | None = None,
        webhooks: Any = None,
    ) -> None:
        super().__init__(address, Handler)
        self.state = state
        self.batches = batches
        self.vertex = vertex_jobs or vertex.VertexJobs(state)
        self.webhooks = webhooks
        """The webhooks API and JWKS (pipeline.emulator.webhooks.Webhooks)."""


def route(method: str, path: str, query: dict[str, list[str]]) -> tuple[str, str, list[str]]:
    """(kind, version, args) of a request; ApiError 404 when no route matches."""
    if path == JWKS_PATH and method == "GET":
        return "jwks", "", []
    segs = [s for s in path.split("/") if s]
    idx = next((i for i, s in enumerate(segs) if VERSION.match(s)), None)
    if idx is None:
        raise ApiError(404, f"Method not found: {path}")
    marker = segs[idx - 1] if idx > 0 else ""
    version, rest = segs[idx], segs[idx + 1 :]
    kind, args = _match(method, marker, rest, "upload_id" in query)
    return kind, version, args


def _match(method: str, marker: str, rest: list[str], has_upload_id: bool) -> tuple[str, list[str]]:
    if marker == "upload" and rest == ["files"] and method == "POST":
        return ("upload_chunk" if has_upload_id else "upload_start"), []
    if len(rest) == 2 and rest[0] == "files" and rest[1].endswith(":download") and method == "GET":
        return "download", [rest[1].removesuffix(":download")]
    if rest == ["files"] and method == "GET":
        return "file_list", []
    if len(rest) == 2 and rest[0] == "files":
        kind = {"GET": "file_get", "DELETE": "file_delete"}.get(method)
        if kind:
            return kind, [rest[1]]
    if len(rest) == 2 and rest[0] == "models" and method == "POST":
        model, _, verb = rest[1].partition(":")
        kind = MODEL_METHODS.get(verb)
        if kind:
            return kind, [model]
    if rest[:1] == ["webhooks"]:
        return "webhooks", rest[1:]
    found = vertex.match(method, rest)
    if found is not None:
        return found
    if rest == ["batches"] and method == "GET":
        return "list", []
    if len(rest) == 2 and rest[0] == "batches":
        bid, _, verb = rest[1].partition(":")
        verbs = {("GET", ""): "get", ("DELETE", ""): "delete", ("POST", "cancel"): "cancel"}
        if (method, verb) in verbs:
            return verbs[(method, verb)], [bid]
    raise ApiError(404, f"Method not found: {method} /{'/'.join(rest)}")


class Handler(BaseHTTPRequestHandler):
    """One request: route, check the key, answer."""

    protocol_version = "HTTP/1.1"
    server: EmulatorServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is kept in memory instead."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self._query = parse_qs(url.query)
        self._body_left = int(self.headers.get("Content-Length") or 0)
        self._entry: dict[str, Any] = {
            "method": self.command,
            "path": url.path,
            "kind": None,
            "batch": None,
            "file": None,
            "status": None,
        }
        self._logged = False
        try:
            kind, self._version, args = route(self.command, url.path, self._query)
            self._entry["kind"] = kind
            if kind == "vertex":  # Vertex AI: OAuth bearer tokens, not API keys
                vertex.check_auth(self.headers.get("Authorization"))
            elif kind not in ("upload_chunk", "jwks"):
                self._check_key()
            getattr(self, f"_on_{kind}")(*args)
        except ApiError as exc:
            # Without an upload status the SDK re-sends a failed chunk 3 times (7 s of sleeps).
            chunk = self._entry["kind"] == "upload_chunk"
            self._send_json(
                exc.code, exc.body(), {"X-Goog-Upload-Status": "final"} if chunk else None
            )
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug: answer like the service's 500
            self.close_connection = True
            self._send_json(500, ApiError(500, f"Internal error encountered: {exc!r}").body())
        finally:
            if self._body_left > 0:
                self.close_connection = True
            if not self._logged:  # no answer was sent (the client went away first)
                self._record(self._entry["status"])

    # --- plumbing --------------------------------------------------------------------------

    def _record(self, status: int | str | None) -> None:
        """Log the request with the status it answers, before the answer's first byte is
        written: a client that reads the request log right after its call then finds the
        entry (logged after the send, a loaded machine let the client read the log first).
        Called again (a download cut short) it updates the logged entry."""
        self._entry["status"] = status
        if not self._logged:
            self._logged = True
            self.server.state.log(self._entry)

    def _check_key(self) -> None:
        key = (self.headers.get("x-goog-api-key") or "").strip()
        key = key or (self._query.get("key") or [""])[0].strip()
        if not key:
            raise ApiError(403, UNREGISTERED)
        expected = self.server.state.config.api_key
        if expected is not None and key != expected:
            raise ApiError(400, "API key not valid. Please pass a valid API key.", KEY_INVALID)

    def _read_json(self) -> dict[str, Any]:
        raw = self.rfile.read(self._body_left) if self._body_left else b""
        self._body_left = 0
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"Invalid JSON payload received. {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid JSON payload received. Expected an object.")
        return body

    def _base(self) -> str:
        host = self.headers.get("Host")
        if not host:
            h, p = self.server.server_address[:2]
            host = f"{h!s}:{p}"
        return f"http://{host}"

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self._record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self._body_left > 0:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _page(self, items: list[Any]) -> tuple[list[Any], str | None]:
        size = int((self._query.get("pageSize") or ["0"])[0] or 0)
        size = 10 if size <= 0 else min(size, 100)
        token_text = (self._query.get("pageToken") or ["0"])[0] or "0"
        if not token_text.isdigit():
            raise ApiError(400, f"Invalid page token: {token_text}")
        start = int(token_text)
        token = str(start + size) if start + size < len(items) else None
        return items[start : start + size], token

    # --- files -----------------------------------------------------------------------------

    def _on_upload_start(self) -> None:
        body = self._read_json()
        meta = pick(body, "file", default={}) or {}
        mime = self.headers.get("X-Goog-Upload-Header-Content-Type") or pick(
            meta, "mimeType", default="application/octet-stream"
        )
        size_header = self.headers.get("X-Goog-Upload-Header-Content-Length")
        size = int(size_header) if size_header else pick(meta, "sizeBytes")
        up = self.server.state.start_upload(meta, str(mime), int(size) if size else None)
        query = f"upload_id={up.id}&upload_protocol=resumable"
        url = f"{self._base()}/upload/{self._version}/files?{query}"
        self._send_json(200, {}, {"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"})

    def _on_upload_chunk(self) -> None:
        state = self.server.state
        up = state.uploads.get(self._query["upload_id"][0])
        if up is None:
            raise ApiError(404, "Upload session not found or already finished.")
        command = self.headers.get("X-Goog-Upload-Command", "")
        offset = int(self.headers.get("X-Goog-Upload-Offset") or 0)
        length, self._body_left = self._body_left, 0
        before = up.received
        try:
            rec = state.upload_chunk(
                up, offset, length, cast(BinaryIO, self.rfile), "finalize" in command
            )
        except ApiError:
            self._body_left = length - (up.received - before)
            raise
        if rec is None:
            self._send_json(200, {}, {"X-Goog-Upload-Status": "active"})
            return
        self._entry["file"] = f"files/{rec.id}"
        body = {"file": rec.to_json(self._base())}
        self._send_json(200, body, {"X-Goog-Upload-Status": "final"})

    def _on_file_get(self, file_id: str) -> None:
        self._entry["file"] = f"files/{file_id}"
        rec = self.server.state.live_file(file_id)
        self._send_json(200, rec.to_json(self._base()))

    def _on_file_list(self) -> None:
        recs, token = self._page(self.server.state.list_files())
        body: dict[str, Any] = {"files": [r.to_json(self._base()) for r in recs]}
        if token:
            body["nextPageToken"] = token
        self._send_json(200, body)

    def _on_file_delete(self, file_id: str) -> None:
        self._entry["file"] = f"files/{file_id}"
        self.server.state.delete_file(file_id)
        self._send_json(200, {})

    def _on_download(self, file_id: str) -> None:
        self._entry["file"] = f"files/{file_id}"
        state = self.server.state
        rec = state.live_file(file_id)
        if rec.source != "GENERATED":
            raise ApiError(400, "Only generated files can be downloaded.")
        faults = state.get_faults()
        fault = faults.http_error("download")
        if fault is not None:
            raise injected(fault.status, fault.message)
        drop = faults.drop_download()
        self._record(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(rec.size))
        self.end_headers()
        self._stream(rec.path, drop, faults.download.bytes_per_second)

    def _stream(self, path: Any, drop: int | None, rate: int | None) -> None:
        step = SEND_BYTES if not rate else max(1, min(SEND_BYTES, rate // 10))
        sent = 0
        with open(path, "rb") as f:
            while data := f.read(step):
                if drop is not None and sent + len(data) > drop:
                    self._record("dropped")
                    self.wfile.write(data[: drop - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)
                sent += len(data)
                if rate:
                    time.sleep(len(data) / rate)

    # --- webhooks (pipeline.emulator.webhooks) ---------------------------------------------

    def _on_webhooks(self, *args: str) -> None:
        body = self._read_json() if self.command in ("POST", "PATCH") else {}
        self._send_json(
            200, self.server.webhooks.handle(self.command, list(args), body, self._query)
        )

    def _on_jwks(self) -> None:
        self._send_json(200, self.server.webhooks.jwks())

    # --- Vertex AI batch prediction (pipeline.emulator.vertex) -----------------------------

    def _on_vertex(self, op: str, project: str, location: str, job_id: str) -> None:
        self._entry["kind"] = f"vertex_{op}"
        page = (
            int((self._query.get("pageSize") or ["0"])[0] or 0),
            (self._query.get("pageToken") or [""])[0],
        )
        body = self._read_json() if op == "create" else {}
        if op == "cancel":
            self._read_json()
        answer, self._entry["batch"] = vertex.serve(
            self.server.vertex, op, project, location, job_id, body, page
        )
        if answer is vertex.LOST:  # the create took effect; its answer never arrives
            self._record("lost")
            self.close_connection = True
            return
        self._send_json(200, answer)

    # --- batches ---------------------------------------------------------------------------

    def _on_create(self, model: str, kind: str = "generate") -> None:
        batches = self.server.batches
        batch = batches.create(
            model.removeprefix("models/"), self._read_json(), self._version, kind
        )
        self._entry["batch"] = f"batches/{batch.id}"
        self._send_json(200, batches.operation(batch))

    def _on_create_embeddings(self, model: str) -> None:
        self._on_create(model, "embed")

    def _on_count_tokens(self, model: str) -> None:
        model = model.removeprefix("models/")
        if models.kind(model) is None:
            raise model_missing(model, self._version, "countTokens")
        body = self._read_json()
        found = Schema.load().validate("CountTokensRequest", body, version=self._version)
        if found:
            raise bad_request(found)
        try:
            self._send_json(200, count_tokens(model, body))
        except ValueError as exc:
            raise ApiError(400, str(exc)) from exc

    def _on_get(self, bid: str) -> None:
        self._entry["batch"] = f"batches/{bid}"
        fault = self.server.state.get_faults().http_error("get")
        if fault is not None:
            raise injected(fault.status, fault.message)
        batches = self.server.batches
        self._send_json(200, batches.operation(batches.get(bid)))

    def _on_list(self) -> None:
        batches = self.server.batches
        items, token = self._page(batches.listing())
        body: dict[str, Any] = {"operations": [batches.operation(b, listing=True) for b in items]}
        if token:
            body["nextPageToken"] = token
        self._send_json(200, body)

    def _on_cancel(self, bid: str) -> None:
        self._entry["batch"] = f"batches/{bid}"
        self._read_json()
        self.server.batches.cancel(bid)
        self._send_json(200, {})

    def _on_delete(self, bid: str) -> None:
        self._entry["batch"] = f"batches/{bid}"
        self.server.batches.delete(bid)
        self._send_json(200, {})
