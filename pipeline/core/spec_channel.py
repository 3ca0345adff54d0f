"""Spec sections about where batches go and who is told: [channel] and [notify].

Pure. `[channel] kind = "vertex"` resolves project and location when the spec is read (from
the `defaults` the caller passes), and what Vertex batch does not serve is refused here:
webhooks, sizes and request counts above its limits. `[notify] webhook_url` is https, or
http to a loopback address.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pipeline.core import catalog
from pipeline.core.spec import CHANNEL_KINDS, ChannelSpec, LimitsSpec, NotifySpec
from pipeline.core.spec_ctx import Ctx, listing

_CHANNEL_KEYS = ("kind", "project", "location", "staging_uri")
_GCP_PROJECT_RE = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")
"""A project id (6-30 of a-z 0-9 -) or a legacy domain-scoped one (example.com:name)."""
_LOCATION_RE = re.compile(r"[a-z0-9-]{2,40}")
_NOTIFY_KEYS = ("webhook_url",)


def notify_section(data: Mapping[str, Any], ctx: Ctx) -> NotifySpec:
    table = ctx.table(data, "notify", required=False)
    ctx.check_keys(table, "notify", _NOTIFY_KEYS)
    url = ctx.string(table, "webhook_url", "notify")
    if url is None:
        return NotifySpec()
    parts = urlsplit(url)
    try:
        host, _port = parts.hostname, parts.port
    except ValueError:
        host = None
    secure = parts.scheme == "https" and bool(host)
    if not (secure or (parts.scheme == "http" and _loopback(host or ""))) or any(
        c.isspace() for c in url
    ):
        raise ctx.bad(
            "notify.webhook_url",
            url,
            "must be an https URL (the service requires it); http only to a loopback "
            "address (the emulator)",
            "e.g. https://hooks.example.com/gemini-webhook",
        )
    return NotifySpec(webhook_url=url)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def channel_section(data: Mapping[str, Any], defaults: Mapping[str, str], ctx: Ctx) -> ChannelSpec:
    table = ctx.table(data, "channel", required=False)
    ctx.check_keys(table, "channel", _CHANNEL_KEYS)
    kind = ctx.string(table, "kind", "channel") or "gemini"
    if kind not in CHANNEL_KINDS:
        raise ctx.bad("channel.kind", kind, "unknown channel", listing(CHANNEL_KINDS))
    if kind == "gemini":
        extra = [k for k in ("project", "location", "staging_uri") if k in table]
        if extra:
            raise ctx.bad(
                f"channel.{extra[0]}",
                table[extra[0]],
                'only for kind = "vertex" (the Gemini Developer API takes none)',
            )
        return ChannelSpec()
    notify = data.get("notify")
    if isinstance(notify, dict) and "webhook_url" in notify:
        raise ctx.bad(
            "notify.webhook_url",
            notify["webhook_url"],
            "webhooks are not on Vertex AI: batch prediction jobs are polled by `nanobatch "
            'tick`; remove notify.webhook_url, or use kind = "gemini"',
        )
    project = ctx.string(table, "project", "channel") or defaults.get("project") or ""
    if not project:
        raise ctx.missing(
            "channel.project", "the Google Cloud project, or set GOOGLE_CLOUD_PROJECT"
        )
    if not _GCP_PROJECT_RE.fullmatch(project):
        raise ctx.bad("channel.project", project, "not a Google Cloud project id")
    location = ctx.string(table, "location", "channel") or defaults.get("location") or ""
    if not location:
        raise ctx.missing(
            "channel.location",
            'the Vertex AI region, e.g. "us-central1", or set GOOGLE_CLOUD_LOCATION',
        )
    if not _LOCATION_RE.fullmatch(location):
        raise ctx.bad("channel.location", location, "not a Vertex AI location", "e.g. us-central1")
    return ChannelSpec("vertex", project, location, _staging_uri(table, ctx))


def _staging_uri(table: Mapping[str, Any], ctx: Ctx) -> str:
    uri = ctx.string(table, "staging_uri", "channel")
    if not uri:
        raise ctx.missing(
            "channel.staging_uri",
            "a gs://bucket/prefix for request files and predictions (Vertex AI batch "
            "prediction reads and writes Cloud Storage)",
        )
    bucket = uri[len("gs://") :].split("/", 1)[0] if uri.startswith("gs://") else ""
    if not bucket or "{" in uri or "}" in uri:
        raise ctx.bad("channel.staging_uri", uri, "must be gs://bucket/prefix", "gs://my-bucket/nb")
    return uri.rstrip("/")


def check_vertex_limits(limits: LimitsSpec, models: catalog.Catalog, ctx: Ctx) -> None:
    found = models.limits("vertex")
    assert found is not None
    per_batch = limits.max_requests_per_batch
    if per_batch is not None and per_batch > found.max_requests_per_job:
        raise ctx.bad(
            "limits.max_requests_per_batch",
            per_batch,
            f"more than the {found.max_requests_per_job:,} requests a Vertex AI batch "
            "prediction job may hold",
            f"an integer from 1 to {found.max_requests_per_job}",
        )
