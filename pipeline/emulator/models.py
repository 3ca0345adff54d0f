"""Model tables of the emulator: known models, aspect ratios, sizes, pixel sizes, image tokens.

The emulator keeps its own table on purpose: it must not import the pipeline's catalog or pricing.
"""

from __future__ import annotations

import math

PRO_MODELS = frozenset({"gemini-3-pro-image-preview", "gemini-3-pro-image"})
FLASH25 = "gemini-2.5-flash-image"
FLASH31 = "gemini-3.1-flash-image-preview"
IMAGE_MODELS = PRO_MODELS | {FLASH25, FLASH31}
# Text models of the Batch API guide's examples (https://ai.google.dev/gemini-api/docs/batch-api
# uses gemini-2.5-flash; the models page lists the others). The thinking ones report
# thoughtsTokenCount (https://ai.google.dev/gemini-api/docs/thinking).
THINKING_TEXT_MODELS = frozenset(
    {"gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-pro-preview", "gemini-3-flash-preview"}
)
TEXT_MODELS = THINKING_TEXT_MODELS | {"gemini-2.5-flash-lite", "gemini-2.0-flash"}
# Embedding models and their default (largest) output size: gemini-embedding-001 gives 3072
# values unless outputDimensionality (128..3072) asks for fewer
# (https://ai.google.dev/gemini-api/docs/embeddings).
EMBEDDING_MODELS = {"gemini-embedding-001": 3072}
EMBEDDING_MIN_DIMENSIONS = 128
GENERATE_MODELS = IMAGE_MODELS | TEXT_MODELS
MODELS = GENERATE_MODELS | EMBEDDING_MODELS.keys()

BASE_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
FLASH31_EXTRA_RATIOS = ("1:4", "4:1", "1:8", "8:1")

# Pro 1K pixel sizes (reference 10.1); 2K and 4K are exact multiples.
PRO_1K: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
    # 3.1 Flash only; not in the reference table (assumed, about 1 MP).
    "1:4": (512, 2048),
    "4:1": (2048, 512),
    "1:8": (384, 3072),
    "8:1": (3072, 384),
}

FLASH25_PIXELS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}

SIZE_FACTOR = {"512": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0}


def is_pro(model: str) -> bool:
    """Whether the model is a Pro image model (thinking, thought images)."""
    return model in PRO_MODELS


def ratios(model: str) -> tuple[str, ...]:
    """The aspect ratios the model accepts."""
    return BASE_RATIOS + FLASH31_EXTRA_RATIOS if model == FLASH31 else BASE_RATIOS


def sizes(model: str) -> tuple[str, ...]:
    """The imageSize values the model accepts; none for 2.5 Flash Image, whose image is a fixed
    ~1 MP (https://ai.google.dev/gemini-api/docs/image-generation shows only aspectRatio)."""
    if model == FLASH25:
        return ()
    return ("512", "1K", "2K", "4K") if model == FLASH31 else ("1K", "2K", "4K")


def default_size(model: str) -> str:
    """The size of an image when the request names none ("" for a model that takes none)."""
    return "1K" if sizes(model) else ""


def kind(model: str) -> str | None:
    """ "image", "text" or "embedding"; None for a model the emulator does not serve."""
    if model in IMAGE_MODELS:
        return "image"
    if model in TEXT_MODELS:
        return "text"
    return "embedding" if model in EMBEDDING_MODELS else None


def pixel_size(model: str, ratio: str, size: str, scale: float = 1.0) -> tuple[int, int]:
    """Width and height of the image, times ``scale`` (each at least 1 px)."""
    if model == FLASH25:
        w, h = FLASH25_PIXELS[ratio]
    else:
        w1, h1 = PRO_1K[ratio]
        f = SIZE_FACTOR[size]
        w, h = int(w1 * f), int(h1 * f)
    return max(1, round(w * scale)), max(1, round(h * scale))


def image_tokens(model: str, size: str) -> int:
    """Output tokens billed for one image of this model and size (0 for other models)."""
    if model not in IMAGE_MODELS:
        return 0
    if model == FLASH25:
        return 1290
    if model == FLASH31:
        return {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520}[size]
    return 2000 if size == "4K" else 1120


def input_image_tokens(model: str) -> int:
    """Prompt tokens counted for each input image part."""
    if model == FLASH25:
        return 258
    return 1120 if model == FLASH31 else 560


def text_tokens(text: str) -> int:
    """A deterministic token estimate for text: ceil(utf-8 bytes / 4), at least 1."""
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))
