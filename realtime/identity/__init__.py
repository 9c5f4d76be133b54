"""The source identity: photos checked from their headers, decoded once, detected, embedded with ArcFace, mixed by
weight, w mapped once; kept on disk in the identity cache.

Synchronous, like the pipeline below it; used by every mode (files, local, live) through one builder.
"""
