"""Privacy benchmark: do faces that move in between two detections show in the anonymize engine's output?

    python -m benchmarks.privacy                                  # every scene, intervals 1,5,10, file and live
    python -m benchmarks.privacy --scenes enter-left-fast,zoom --intervals 5 --modes file

Scripted clips (`scenes.py`): real face photos (scikit-image's astronaut, insightface's group photo) cut out with a
soft alpha and composited onto a textured background at 640x480, 30 fps: a face entering from each edge at three
speeds, two faces crossing, a face hidden by a sliding rectangle and uncovered, a fast zoom, a face at 10 % of the
frame height, a lighting change; a still face in every scene keeps the tracker busy, so the detector runs only
every N frames. Ground truth per frame comes from the compositing (each face's box, landmarks and what of it shows),
and a second one from facenet-pytorch's own MTCNN on the input frames (`reference.py`), with where they disagree.
A face counts in a frame when >= 70 % of its box is inside the picture (and its core is not hidden behind
something); it is leaked when its core keeps the input's detail (`leaks.py`). Runs: file mode through
`realtime.files.swap` (lossless FFV1 in, H.264 out, as `dancecam swap --engine anonymize`), and a live session
(the server in this process, an aiortc client on 127.0.0.1 matching returned frames by their stamp), for each
detection interval with the change check (`detect_on_change`, when this branch has it) on and off. Reported:
leaked face-frames / face-frames per scene and variant, the pipeline's time per frame (p50/p95, in ms and frames
at 30 fps) against the check off and against interval 1, the live round trip, and calibration rows that show what
the leak test gives on faces left unchanged and on each anonymize style. Results: benchmarks/results/privacy-*.
"""
