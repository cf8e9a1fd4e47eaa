"""The REST API (FastAPI): auth, job submission and control, events, metrics, uploads, presets, dashboard.

Torch-free: it validates specs with `engine.spec` and hands jobs to workers through `core.queue`.
Start it with `papertrain api` (or `papertrain up` for api + worker + dashboard).
"""
