"""The pure decision core: URL parsing -> classification -> policy decision.

Purity contract (enforced by tests/test_layering.py): nothing under ``proxy.core`` performs I/O,
reads a clock, the environment or a file, or imports aiohttp, redis, prometheus_client, asyncio or
socket. Inputs arrive as arguments (the instant to decide at included); results are frozen values.
"""
