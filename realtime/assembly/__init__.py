"""The composition root: one validated `ModelSpec` → the detector, the swap engine (its backend chosen once), the
ArcFace embedder and the identity cache, for every mode alike (file, camera, server, benchmark).

Layer: under the modes (realtime.files, local, live, bench), over realtime.identity, the pipeline and engines.
"""
