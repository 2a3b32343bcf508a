"""``mlserve users`` and ``mlserve keys``: who may call MLServe, and with which keys."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta, timezone

from mlserve_api.v1 import user_pb2
from mlserve_client import Client
from mlserve_client.cli.common import Subcommands, command, group
from mlserve_client.cli.output import print_table, when


def add_commands(commands: Subcommands, connection: argparse.ArgumentParser) -> None:
    users = group(commands, "users", "create and list users (admins)")
    create = command(
        users,
        "create",
        _create_user,
        "create a user",
        connection,
        example="mlserve users create ann --role editor",
    )
    create.add_argument("name")
    create.add_argument("--role", required=True, choices=("admin", "editor", "viewer"))
    create.add_argument("--display-name", default="")
    command(users, "list", _list_users, "list every user", connection, example="mlserve users list")
    keys = group(commands, "keys", "create, list and revoke API keys")
    make = command(
        keys,
        "create",
        _create_key,
        "make a key; prints it once",
        connection,
        example="mlserve keys create --user ann --expires-in-days 30",
    )
    make.add_argument("--user", default="", help="whose key (default: yours)")
    make.add_argument("--app", default="", help="an app, with --consumer: a consumer's key")
    make.add_argument("--consumer", default="")
    make.add_argument("--expires-in-days", type=float, help="the key stops working after this")
    listing = command(
        keys,
        "list",
        _list_keys,
        "list keys (no secrets)",
        connection,
        example="mlserve keys list --user ann",
    )
    listing.add_argument("--user", default="")
    revoke = command(
        keys,
        "revoke",
        _revoke_key,
        "revoke a key by its id",
        connection,
        example="mlserve keys revoke 3f9c0a1b2d4e",
    )
    revoke.add_argument("id", help="the key's id (the part after 'mls_')")


def _create_user(client: Client, args: argparse.Namespace) -> int:
    user = client.create_user(args.name, args.role, args.display_name)
    print(f"created user {user.name} ({args.role}); default workspace {user.default_workspace}")
    return 0


def _list_users(client: Client, args: argparse.Namespace) -> int:
    print_table(
        ("NAME", "ROLE", "ACTIVE", "DEFAULT WORKSPACE"),
        (
            (
                user.name,
                user_pb2.Role.Name(user.role).removeprefix("ROLE_").lower(),
                "yes" if user.active else "no",
                user.default_workspace,
            )
            for user in client.list_users()
        ),
    )
    return 0


def _create_key(client: Client, args: argparse.Namespace) -> int:
    expire = None
    if args.expires_in_days is not None:
        expire = datetime.now(timezone.utc) + timedelta(days=args.expires_in_days)
    key = client.create_key(args.user, app=args.app, consumer=args.consumer, expire_time=expire)
    print(key.secret)
    whose = f"{key.app}/{key.consumer}" if key.app else key.user
    print(f"key {key.id} for {whose}: store it now, it is not shown again", file=sys.stderr)
    return 0


def _list_keys(client: Client, args: argparse.Namespace) -> int:
    print_table(
        ("ID", "OWNER", "CREATED", "LAST USED", "EXPIRES", "REVOKED"),
        (
            (
                key.id,
                f"{key.app}/{key.consumer}" if key.app else key.user,
                when(key.create_time),
                when(key.last_used_time),
                when(key.expire_time),
                "yes" if key.revoked else "no",
            )
            for key in client.list_keys(args.user)
        ),
    )
    return 0


def _revoke_key(client: Client, args: argparse.Namespace) -> int:
    client.users.RevokeApiKey(user_pb2.RevokeApiKeyRequest(id=args.id))
    print(f"revoked key {args.id}")
    return 0
