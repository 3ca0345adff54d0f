"""Build ``schema.json``, the request schema the emulator validates against (a dev tool).

The emulator never imports this module. It reads the message descriptors of the published
``google-ai-generativelanguage`` package (the v1beta protos of the Generative Language API) and
writes, for every message reachable from the request messages the emulator accepts, its fields
(proto name, JSON name, kind, repeated, oneof) and every enum's values. Where that package lags
the service, PATCHES and EXTRA_MESSAGES below add what is missing, each with its source.

Regenerate (in a scratch virtualenv; the package is not a dependency of nanobatch)::

    python -m venv /tmp/schema-venv
    /tmp/schema-venv/bin/pip install google-ai-generativelanguage==0.12.1
    PYTHONPATH=. /tmp/schema-venv/bin/python -m pipeline.emulator.schema_build

and commit the changed ``pipeline/emulator/schema.json``.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "google-ai-generativelanguage"
API = "google.ai.generativelanguage.v1beta"
OUT = Path(__file__).with_name("schema.json")
# Well-known types: the validator knows their JSON forms; their fields are not listed.
WELL_KNOWN = frozenset(
    {
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.Duration",
        "google.protobuf.Timestamp",
    }
)
# The request messages of the published protos the emulator parses bodies and lines as.
ROOTS = ("GenerateContentRequest", "EmbedContentRequest", "CountTokensRequest")

SDK = "google-genai 3.6.1"


@dataclass(frozen=True)
class Patch:
    """A field the service accepts that the published protos of PACKAGE lack."""

    message: str  # short name, in API
    name: str  # proto (snake_case) name
    kind: str  # TYPE_STRING ..., TYPE_MESSAGE, TYPE_ENUM, "map" or "any" (shape unknown)
    source: str
    type: str | None = None  # full name of a message or enum
    repeated: bool = False
    oneof: str | None = None
    value: dict[str, str] | None = None  # map value: {"kind", "type"}


# Fields missing from google-ai-generativelanguage 0.12.1 (v1beta). "any" means the shape is
# not published anywhere the emulator can read: any JSON value is accepted there.
PATCHES: tuple[Patch, ...] = (
    Patch(
        "ImageConfig",
        "image_size",
        "TYPE_STRING",
        "https://ai.google.dev/gemini-api/docs/image-generation (imageConfig.imageSize "
        f'"1K"/"2K"/"4K", "512" on 3.1 Flash); {SDK} _ImageConfig_to_mldev sends imageSize',
    ),
    Patch(
        "ThinkingConfig",
        "thinking_level",
        "TYPE_ENUM",
        "https://ai.google.dev/gemini-api/docs/thinking (thinkingLevel); values from "
        f"{SDK} types.ThinkingLevel",
        type=f"{API}.ThinkingLevel",
    ),
    Patch(
        "GenerationConfig",
        "audio_transcription_config",
        "any",
        f"{SDK} _GenerateContentConfig_to_mldev (generationConfig.audioTranscriptionConfig)",
    ),
    Patch(
        "GenerateContentRequest",
        "labels",
        "map",
        f"{SDK} _GenerateContentConfig_to_mldev (request.labels)",
        value={"kind": "TYPE_STRING"},
    ),
    Patch(
        "GenerateContentRequest",
        "service_tier",
        "TYPE_STRING",
        f"{SDK} _GenerateContentConfig_to_mldev (request.serviceTier; values of "
        "types.ServiceTier; the wire enum is not published, so any string)",
    ),
    Patch(
        "GenerateContentRequest",
        "store",
        "TYPE_BOOL",
        f"{SDK} _GenerateContentConfig_to_mldev (request.store)",
    ),
    Patch(
        "GenerateContentRequest",
        "continuation_token",
        "any",
        f"{SDK} _GenerateContentConfig_to_mldev (request.continuationToken)",
    ),
    *(
        Patch("Part", name, "any", f"{SDK} _Part_to_mldev (part.{camel})")
        for name, camel in (
            ("media_resolution", "mediaResolution"),
            ("tool_call", "toolCall"),
            ("tool_response", "toolResponse"),
            ("audio_transcription", "audioTranscription"),
            ("media_processing", "mediaProcessing"),
            ("speech_metadata", "speechMetadata"),
            ("document_metadata", "documentMetadata"),
            ("spreadsheet_metadata", "spreadsheetMetadata"),
            ("audio_metadata", "audioMetadata"),
        )
    ),
    Patch("Tool", "mcp_servers", "any", f"{SDK} _Tool_to_mldev (tool.mcpServers)"),
    Patch(
        "ToolConfig",
        "include_server_side_tool_invocations",
        "TYPE_BOOL",
        f"{SDK} _ToolConfig_to_mldev (toolConfig.includeServerSideToolInvocations)",
    ),
    Patch("Tool.GoogleSearch", "search_types", "any", f"{SDK} _GoogleSearch_to_mldev"),
    Patch("GoogleMaps", "auth_config", "any", f"{SDK} _GoogleMaps_to_mldev (authConfig)"),
)

BATCH_DOC = "https://ai.google.dev/api/batch-api (REST reference)"
EMBED_DOC = "https://ai.google.dev/api/embeddings (REST reference, EmbedContentBatch)"
BATCH_GUIDE = "https://ai.google.dev/gemini-api/docs/batch-api (JSONL input: key + request)"


def _f(kind: str, type_: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind}
    if type_ is not None:
        out["type"] = type_
    out.update(extra)
    return out


STAMP = "google.protobuf.Timestamp"
INT64 = "TYPE_INT64"


def _batch(kind: str, input_config: str, stats: str, source: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "model": _f("TYPE_STRING"),
        "name": _f("TYPE_STRING"),
        "display_name": _f("TYPE_STRING"),
        "input_config": _f("TYPE_MESSAGE", f"{API}.{input_config}"),
        # Output only: never sent by clients; its shape is not checked.
        "output": _f("any"),
        "create_time": _f("TYPE_MESSAGE", STAMP),
        "end_time": _f("TYPE_MESSAGE", STAMP),
        "update_time": _f("TYPE_MESSAGE", STAMP),
        "batch_stats": _f("TYPE_MESSAGE", f"{API}.{stats}"),
        "state": _f("TYPE_ENUM", f"{API}.BatchState"),
        "priority": _f(INT64),
    }
    if kind == "GenerateContentBatch":
        fields["webhook_config"] = _f("TYPE_MESSAGE", f"{API}.WebhookConfig")
    return {"source": source, "fields": fields}


def _input(requests: str, source: str) -> dict[str, Any]:
    return {
        "source": source,
        "fields": {
            "file_name": _f("TYPE_STRING", oneof="source"),
            "requests": _f("TYPE_MESSAGE", f"{API}.{requests}", oneof="source"),
        },
    }


def _stats(source: str) -> dict[str, Any]:
    names = ("request_count", "successful_request_count", "failed_request_count")
    return {
        "source": source,
        "fields": {n: _f(INT64) for n in (*names, "pending_request_count")},
    }


# Messages the published package does not have at all (the batch service is not in it).
EXTRA_MESSAGES: dict[str, dict[str, Any]] = {
    f"{API}.BatchGenerateContentRequest": {
        "source": BATCH_DOC + " models.batchGenerateContent request body",
        "fields": {"batch": _f("TYPE_MESSAGE", f"{API}.GenerateContentBatch")},
    },
    f"{API}.GenerateContentBatch": _batch(
        "GenerateContentBatch",
        "InputConfig",
        "BatchStats",
        BATCH_DOC + f"; webhookConfig from {SDK} _CreateBatchJobConfig_to_mldev",
    ),
    f"{API}.InputConfig": _input("InlinedRequests", BATCH_DOC),
    f"{API}.InlinedRequests": {
        "source": BATCH_DOC,
        "fields": {"requests": _f("TYPE_MESSAGE", f"{API}.InlinedRequest", repeated=True)},
    },
    f"{API}.InlinedRequest": {
        "source": BATCH_DOC,
        "fields": {
            "request": _f("TYPE_MESSAGE", f"{API}.GenerateContentRequest"),
            "metadata": _f("TYPE_MESSAGE", "google.protobuf.Struct"),
        },
    },
    f"{API}.BatchStats": _stats(BATCH_DOC),
    f"{API}.WebhookConfig": {
        "source": f"{SDK} types.WebhookConfig (sent as batch.webhookConfig)",
        "fields": {
            "uris": _f("TYPE_STRING", repeated=True),
            "user_metadata": _f("TYPE_MESSAGE", "google.protobuf.Struct"),
        },
    },
    f"{API}.AsyncBatchEmbedContentRequest": {
        "source": EMBED_DOC + " models.asyncBatchEmbedContent request body",
        "fields": {"batch": _f("TYPE_MESSAGE", f"{API}.EmbedContentBatch")},
    },
    f"{API}.EmbedContentBatch": _batch(
        "EmbedContentBatch", "InputEmbedContentConfig", "EmbedContentBatchStats", EMBED_DOC
    ),
    f"{API}.InputEmbedContentConfig": _input("InlinedEmbedContentRequests", EMBED_DOC),
    f"{API}.InlinedEmbedContentRequests": {
        "source": EMBED_DOC,
        "fields": {
            "requests": _f("TYPE_MESSAGE", f"{API}.InlinedEmbedContentRequest", repeated=True)
        },
    },
    f"{API}.InlinedEmbedContentRequest": {
        "source": EMBED_DOC,
        "fields": {
            "request": _f("TYPE_MESSAGE", f"{API}.EmbedContentRequest"),
            "metadata": _f("TYPE_MESSAGE", "google.protobuf.Struct"),
        },
    },
    f"{API}.EmbedContentBatchStats": _stats(EMBED_DOC),
    # One line of a batch's input file. The service's own message for it is not published;
    # the guide says each line is {"key": ..., "request": ...}.
    "nanobatch.emulator.GenerateContentLine": {
        "source": BATCH_GUIDE,
        "fields": {
            "key": _f("TYPE_STRING"),
            "request": _f("TYPE_MESSAGE", f"{API}.GenerateContentRequest"),
        },
    },
    "nanobatch.emulator.EmbedContentLine": {
        "source": BATCH_GUIDE,
        "fields": {
            "key": _f("TYPE_STRING"),
            "request": _f("TYPE_MESSAGE", f"{API}.EmbedContentRequest"),
        },
    },
}

EXTRA_ENUMS: dict[str, dict[str, Any]] = {
    f"{API}.BatchState": {
        "source": BATCH_DOC + " (BatchState)",
        "values": {
            "BATCH_STATE_UNSPECIFIED": 0,
            "BATCH_STATE_PENDING": 1,
            "BATCH_STATE_RUNNING": 2,
            "BATCH_STATE_SUCCEEDED": 3,
            "BATCH_STATE_FAILED": 4,
            "BATCH_STATE_CANCELLED": 5,
            "BATCH_STATE_EXPIRED": 6,
        },
    },
    f"{API}.ThinkingLevel": {
        "source": f"{SDK} types.ThinkingLevel",
        "values": {
            "THINKING_LEVEL_UNSPECIFIED": 0,
            "MINIMAL": 1,
            "LOW": 2,
            "MEDIUM": 3,
            "HIGH": 4,
            "XHIGH": 5,
        },
    },
}


def _kind_name(field: Any) -> str:
    from google.protobuf.descriptor import FieldDescriptor as F

    names = {v: k for k, v in vars(F).items() if k.startswith("TYPE_") and isinstance(v, int)}
    return names[field.type]


def _field(field: Any, walk: list[Any]) -> dict[str, Any]:
    """The schema entry of one proto field; message and enum types it names go on ``walk``."""
    message, enum = field.message_type, field.enum_type
    if message is not None and message.GetOptions().map_entry:
        value = message.fields_by_name["value"]
        entry: dict[str, Any] = {"kind": "map", "value": _field(value, walk)}
    else:
        entry = {"kind": _kind_name(field)}
        if message is not None:
            entry["type"] = message.full_name
            walk.append(message)
        elif enum is not None:
            entry["type"] = enum.full_name
            walk.append(enum)
        if field.is_repeated:
            entry["repeated"] = True
    oneof = field.containing_oneof
    # proto3 `optional` makes a synthetic oneof "_<name>" of one field: not a real oneof.
    if oneof is not None and not (oneof.name == f"_{field.name}" and len(oneof.fields) == 1):
        entry["oneof"] = oneof.name
    return entry


def _proto_name(field: Any) -> str:
    """The field's name in the service's protos: proto-plus appends "_" to names that are
    Python builtins ("type" became "type_"); its JSON name keeps the real one."""
    name: str = field.name
    if name.endswith("_") and field.json_name == name[:-1]:
        return name[:-1]
    return name


def build() -> dict[str, Any]:
    """The schema document (see the module docstring)."""
    from google.ai import generativelanguage_v1beta as g
    from google.protobuf.descriptor import Descriptor, EnumDescriptor

    messages: dict[str, Any] = {}
    enums: dict[str, Any] = {}
    walk: list[Any] = [getattr(g, name).pb().DESCRIPTOR for name in ROOTS]
    while walk:
        d = walk.pop()
        if d.full_name in messages or d.full_name in enums or d.full_name in WELL_KNOWN:
            continue
        if isinstance(d, EnumDescriptor):
            enums[d.full_name] = {"values": {v.name: v.number for v in d.values}}
        elif isinstance(d, Descriptor):
            fields: dict[str, Any] = {}
            messages[d.full_name] = {"fields": fields}
            for field in d.fields:
                fields[_proto_name(field)] = _field(field, walk)
    patched = _apply_patches(messages)
    messages.update(copy.deepcopy(EXTRA_MESSAGES))
    enums.update(copy.deepcopy(EXTRA_ENUMS))
    return {
        "source": {
            "package": PACKAGE,
            "version": importlib.metadata.version(PACKAGE),
            "protos": API,
            "generator": "python -m pipeline.emulator.schema_build",
        },
        "patched": patched,
        "messages": dict(sorted(messages.items())),
        "enums": dict(sorted(enums.items())),
    }


def _apply_patches(messages: dict[str, Any]) -> list[str]:
    """Add PATCHES to ``messages``; one "Message.field: source" line per patch."""
    lines = []
    for p in PATCHES:
        fields = messages[f"{API}.{p.message}"]["fields"]
        if p.name in fields:
            raise SystemExit(f"{p.message}.{p.name} is in the package now: drop its patch")
        entry: dict[str, Any] = {"kind": p.kind}
        if p.type is not None:
            entry["type"] = p.type
        if p.repeated:
            entry["repeated"] = True
        if p.oneof is not None:
            entry["oneof"] = p.oneof
        if p.value is not None:
            entry["value"] = p.value
        fields[p.name] = entry
        lines.append(f"{p.message}.{p.name}: {p.source}")
    for name, message in EXTRA_MESSAGES.items():
        lines.append(f"{name.removeprefix(API + '.')} (whole message): {message['source']}")
    for name, enum in EXTRA_ENUMS.items():
        lines.append(f"{name.removeprefix(API + '.')} (enum): {enum['source']}")
    return lines


def main() -> None:
    """Write OUT."""
    doc = build()
    # Sources live in "patched"; the messages keep only what the validator reads.
    for message in doc["messages"].values():
        message.pop("source", None)
    for enum in doc["enums"].values():
        enum.pop("source", None)
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(doc['messages'])} messages, {len(doc['enums'])} enums)")


if __name__ == "__main__":
    main()
