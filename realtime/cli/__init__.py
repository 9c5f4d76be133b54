"""The command line, the top layer: `dancecam swap | cam | serve | models | bench`.

Each command parses its options, has the assembly build what it needs, and hands it to one of the modes below
(files, local, live, bench). Errors end here: a `DanceCamError` becomes one line and its exit code.
"""
