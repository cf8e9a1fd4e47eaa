"""The Celery consumer: claims queued jobs, runs the engine as a child process, records its events.

Torch-free: the engine runs in its own process (`python -m engine.train`). Start one with
`papertrain worker` or `python -m worker.main --queues cpu`.
"""
