"""The one keyset pager (core.paging Listing + PageTokens.page) over a real
SQLite table: every row once in either direction, rows hidden by ``keep``
leave the paging intact, a composite order, and tokens bound to their listing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import peewee as pw
import pytest

from mlserve.core.errors import InvalidArgument
from mlserve.core.paging import Listing, PageTokens

TOKENS = PageTokens(b"p" * 32)


class Row(pw.Model):
    name = pw.CharField(unique=True)
    group = pw.IntegerField()


@pytest.fixture
def rows() -> Iterator[type[Row]]:
    db = pw.SqliteDatabase(":memory:")
    with db.bind_ctx([Row]):
        db.create_tables([Row])
        Row.insert_many([{"name": f"r{i:02}", "group": i % 3} for i in range(23)]).execute()
        yield Row
    db.close()


def every_page(listing: Listing[Any], size: int) -> list[list[Any]]:
    pages, token = [], ""
    while True:
        page = TOKENS.page(listing, size, token)
        pages.append(page.items)
        token = page.next_page_token
        if not token:
            return pages


def flat(pages: list[list[Any]]) -> list[Any]:
    return [item for page in pages for item in page]


def by_name(table: type[Row], **options: Any) -> Listing[str]:
    return Listing(
        table.select(), table.name, lambda row: row.name, lambda row: row.name,
        {"list": "rows"}, **options,
    )  # fmt: skip


def test_every_row_once_in_order_either_way(rows: type[Row]) -> None:
    names = [f"r{i:02}" for i in range(23)]
    pages = every_page(by_name(rows), 5)
    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    assert flat(pages) == names
    assert flat(every_page(by_name(rows, descending=True), 7)) == names[::-1]
    assert TOKENS.page(by_name(rows), 0, "").items == names  # 0: the default size


def test_rows_kept_out_leave_the_paging_intact(rows: type[Row]) -> None:
    pages = every_page(by_name(rows, keep=lambda row: row.group == 0), 5)
    assert len(pages) == 5
    assert flat(pages) == [f"r{i:02}" for i in range(0, 23, 3)]


def test_a_composite_order(rows: type[Row]) -> None:
    listing = Listing(
        rows.select(), rows.name, lambda row: row.name, lambda row: [row.group, row.name],
        {"list": "rows by group"},
        sort=(rows.group, rows.name),
        after=lambda key: pw.Tuple(rows.group, rows.name) > pw.Tuple(*key),
    )  # fmt: skip
    expected = sorted((f"r{i:02}" for i in range(23)), key=lambda name: (int(name[1:]) % 3, name))
    assert flat(every_page(listing, 4)) == expected


def test_a_token_continues_only_its_own_listing(rows: type[Row]) -> None:
    token = TOKENS.page(by_name(rows), 5, "").next_page_token
    other = Listing(
        rows.select(), rows.name, lambda row: row.name, lambda row: row.name,
        {"list": "rows", "group": 1},
    )  # fmt: skip
    with pytest.raises(InvalidArgument, match="different query"):
        TOKENS.page(other, 5, token)
    with pytest.raises(InvalidArgument, match="not one this server issued"):
        PageTokens(b"q" * 32).page(by_name(rows), 5, token)
    with pytest.raises(InvalidArgument, match="negative"):
        TOKENS.page(by_name(rows), -1, "")
