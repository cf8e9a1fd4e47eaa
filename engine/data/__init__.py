"""Datasets for the engine: load rows, detect and validate formats, tokenize with loss masks, batch.

from engine.data import load_rows, expect_format, tokenize_sft, collate_sft
"""

from engine.data.builtin import BUILTINS, builtin_rows
from engine.data.collate import (
    PreferenceTokenBatch,
    TokenBatch,
    collate_preferences,
    collate_sft,
    pad_rows,
)
from engine.data.formats import (
    FORMATS,
    DataFormatError,
    RowError,
    detect_format,
    expect_format,
    validate_rows,
)
from engine.data.sources import load_rows, read_file, resolve_upload
from engine.data.tokenize import (
    PreferenceExample,
    SFTExample,
    conversation_segments,
    prompt_text,
    render,
    tokenize_preferences,
    tokenize_sft,
)

__all__ = [
    "BUILTINS",
    "FORMATS",
    "DataFormatError",
    "PreferenceExample",
    "PreferenceTokenBatch",
    "RowError",
    "SFTExample",
    "TokenBatch",
    "builtin_rows",
    "collate_preferences",
    "collate_sft",
    "conversation_segments",
    "detect_format",
    "expect_format",
    "load_rows",
    "pad_rows",
    "prompt_text",
    "read_file",
    "render",
    "resolve_upload",
    "tokenize_preferences",
    "tokenize_sft",
    "validate_rows",
]
