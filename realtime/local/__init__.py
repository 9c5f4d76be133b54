"""The local camera: frames from a webcam or a file stand-in, out to a virtual camera or a preview window.

Sits under the CLI beside files, live and bench; runs the synchronous pipeline on its worker thread.
"""
