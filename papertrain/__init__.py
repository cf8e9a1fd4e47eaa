"""The program: the `papertrain` command and embedded mode, the one layer that starts the api and the worker.

Nothing below it (api, worker, core, engine) imports this package.
"""
