"""Access control: who is calling (keys), what each caller may do (rules), the
users (users.py, with their keys), workspaces (workspaces.py) and apps (apps.py)
those rules read, and the audit trail.

Every rule lives in :mod:`mlserve.access.rules`; the call guard authenticates
and applies the per-RPC table, the domain asks the rules about resources.
"""

from __future__ import annotations

from mlserve.access.keys import ADMIN_KEY_FILE, Access, forget_decisions
from mlserve.access.rules import Principal, current_principal

__all__ = ["ADMIN_KEY_FILE", "Access", "Principal", "current_principal", "forget_decisions"]
