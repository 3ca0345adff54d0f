"""Just enough Cloud Storage for Vertex batch prediction: object sizes, streamed reads and
uploads through a GCS emulator's JSON API (STORAGE_EMULATOR_HOST, e.g. fake-gcs-server)."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path


class Gcs:
    """Just enough of the GCS JSON API: object metadata, streamed reads and uploads."""

    def __init__(self, host: str) -> None:
        url = host if "://" in host else f"http://{host}"
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    @staticmethod
    def _path(bucket: str, name: str) -> str:
        return f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/" + urllib.parse.quote(
            name, safe=""
        )

    def size(self, uri: str) -> int | None:
        """The object's size, or None when it does not exist."""
        bucket, name = split_gs(uri)
        conn = self._conn()
        try:
            conn.request("GET", self._path(bucket, name))
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status == 404:
            return None
        if response.status != 200:
            raise OSError(f"GCS {response.status} reading {uri}: {body[:200]!r}")
        return int(json.loads(body).get("size", 0))

    def lines(self, uri: str) -> Iterator[bytes]:
        """The object's lines, streamed."""
        bucket, name = split_gs(uri)
        conn = self._conn()
        try:
            conn.request("GET", self._path(bucket, name) + "?alt=media")
            response = conn.getresponse()
            if response.status != 200:
                raise OSError(f"GCS {response.status} reading {uri}")
            while raw := response.readline():
                yield raw
        finally:
            conn.close()

    def upload(self, uri: str, path: Path) -> None:
        """Upload a local file to `uri` (a simple media upload, streamed from disk)."""
        bucket, name = split_gs(uri)
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        conn = self._conn()
        try:
            with path.open("rb") as body:
                conn.request(
                    "POST",
                    f"/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?{query}",
                    body=body,
                    headers={
                        "Content-Type": "application/jsonl",
                        "Content-Length": str(path.stat().st_size),
                    },
                )
            response = conn.getresponse()
            text = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise OSError(f"GCS {response.status} writing {uri}: {text[:200]!r}")


def split_gs(uri: str) -> tuple[str, str]:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    return bucket, name
