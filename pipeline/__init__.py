"""nanobatch: a table of prompts to stored, costed images through the Gemini Batch API."""

from __future__ import annotations

__version__ = "0.1.0"
