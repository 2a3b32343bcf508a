"""The bottom layer: errors, names, paging and asyncio helpers. Imports nothing of MLServe."""
