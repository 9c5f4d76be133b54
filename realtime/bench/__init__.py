"""`dancecam bench`: times FaceDancer's backends and the whole pipeline on frames of real faces made here.

Sits under the CLI beside files, local and live; its sample faces (scikit-image's astronaut) also serve the
capacity probe and the tests.
"""
