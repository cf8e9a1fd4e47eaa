"""What the api and the worker share: settings, database access, models, the job state machine, auth.

Torch-free on purpose: importing anything here must stay cheap (a test checks that torch, transformers
and mlflow are not imported). Process entry points live in the `papertrain` package above it.
"""
