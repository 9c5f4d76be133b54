"""Live serving: the aiohttp server, sessions, WebRTC transport (aiortc), ICE addresses, degradation, capacity and
the glass-to-glass stamp.

The asyncio layer: it owns the event loop and never blocks it; each session's frames run on the pipeline layer's
worker thread. Sits under the CLI beside files, local and bench, and under realtime.cluster, whose session hosts run
its sessions and whose front is its HTTP side.
"""
