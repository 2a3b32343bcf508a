"""The inference log (issue 13): logging policies per deployment, a bounded
queue the gateway hands raw calls to, a Parquet writer off the event loop,
retention, and reading records back."""

from __future__ import annotations

from mlserve.monitor.log import InferenceLog, LogSettings
from mlserve.monitor.policy import LoggingPolicy, Mode

__all__ = ["InferenceLog", "LogSettings", "LoggingPolicy", "Mode"]
