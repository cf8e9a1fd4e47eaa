"""Datasets for the engine: load rows, detect and validate formats, tokenize with loss masks, batch.

    from engine.data.sources import load_rows          # rows of a built-in set, an upload, a file or a hub id
    from engine.data.formats import expect_format      # the row format an algorithm needs, checked
    from engine.data.tokenize import tokenize_sft      # token ids and loss masks
    from engine.data.collate import collate_sft        # padded torch batches

Import the submodules: this package imports nothing, so the torch-free ones (`access`, `formats`, `builtin`)
stay light for the api.
"""
