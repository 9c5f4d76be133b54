"""The synchronous frame core: one frame in, one frame out (detect, track, choose, align, swap, blend), its
device context, profiler and worker thread.

It never imports asyncio, aiortc, aiohttp or av (an import-linter contract in pyproject.toml, run by the test
command): the modes above feed it arrays and take arrays back.
"""
