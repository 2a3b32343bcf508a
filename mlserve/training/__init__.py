"""Training jobs: a user's script run in the sandbox on a dataset, its outputs a
model version (``sandboxed`` runs one job; ``runner`` queues them)."""
