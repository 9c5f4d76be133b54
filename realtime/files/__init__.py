"""File mode: swap the source face into a photo or a video file, frame by frame, written only when complete.

Sits under the CLI beside local, live and bench; uses the identity and pipeline layers and PyAV for the files.
"""
