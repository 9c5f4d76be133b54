"""Scale-out with Ray: session hosts (Ray actors that run whole live sessions, their models, pipelines and WebRTC
peers) and the front that signals to them and aggregates them (`dancecam serve --cluster`).

Sits under the CLI, over live (whose sessions, peers and HTTP side it reuses); the only layer that imports Ray.
Design notes: docs/design-notes.md, section realtime/cluster.
"""
