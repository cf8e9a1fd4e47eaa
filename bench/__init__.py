"""Speed and memory benchmarks. `make bench` (or `python -m bench [--only NAME]`) prints numbers; nothing here
asserts a timing. Each measurement runs in its own process so peak-RSS numbers do not leak between them."""
