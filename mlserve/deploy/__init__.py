"""Deploying: the fleet of Tritons, placement, the deployment lifecycle of models and
pipelines, and the reconciler that makes each Triton match the desired state."""
