"""ONNX Runtime behind the runner interface: an exported graph (`engines.runners.onnx_export`, fp32, dynamic batch)
or a foreign one (SCRFD's det_10g.onnx, fixed shapes).

Design notes: docs/design-notes.md, section engines/runners/onnxruntime.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.errors import CheckpointFormatError
from engines.runners.base import IOSpec, NetworkIO, RunnerBase


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:2] if p.isdigit())


def cuda_provider_present() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def check_session_io(declared: Sequence[Any], specs: Sequence[IOSpec], kind: str, source: str) -> None:
    """The session's inputs or outputs (objects with .name, .shape, .type, as ORT reports them) against the io:
    names in order, float32, and every static dimension but the first. The first is checked at run time: it is
    the batch axis, or it depends on an input size the graph leaves symbolic (SCRFD's anchor counts, which the
    file declares only as an export-time annotation)."""
    names = [d.name for d in declared]
    if names != [s.name for s in specs]:
        raise CheckpointFormatError(f"{source}: {kind} {names}, expected {[s.name for s in specs]}")
    for d, spec in zip(declared, specs, strict=True):
        shape = list(d.shape)
        fits = len(shape) == len(spec.shape) and all(
            not isinstance(got, int) or got == want for got, want in zip(shape[1:], spec.shape[1:], strict=True)
        )
        if d.type != "tensor(float)" or not fits:
            raise CheckpointFormatError(
                f"{source}: {d.name} is {d.type} {shape}, expected tensor(float) {list(spec.shape)}"
            )


class OnnxRuntimeRunner(RunnerBase):
    backend = "onnxruntime"
    precision = "fp32"

    def __init__(
        self,
        path: str | os.PathLike[str],
        io: NetworkIO,
        device: torch.device | str = "cpu",
        session_options: Any = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.io = io
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.session_options = session_options
        self.providers: list[str] = []
        self._session: Any = None
        self._stream: torch.cuda.Stream | None = None
        self._run_options: Any = None

    @property
    def io_binding(self) -> bool:
        """Whether inputs and outputs stay in device memory (the CUDA provider runs the graph)."""
        return self._stream is not None

    def _activate(self) -> None:
        import onnxruntime as ort

        providers: list[Any] = ["CPUExecutionProvider"]
        on_cuda = self.device.type == "cuda" and cuda_provider_present()
        if on_cuda:
            stream = torch.cuda.current_stream(self.device)
            if stream.cuda_stream == 0:
                # ORT takes a handle of 0 for "no stream" and would run on one of its own, ordered with nothing:
                # activated on the legacy default stream (a server's main thread), ORT gets a stream of ours
                stream = torch.cuda.Stream(self.device)
            # ORT queues its kernels on torch's stream: ordered with the caller's work, no synchronisation needed
            options = {"device_id": str(self.device.index), "user_compute_stream": str(stream.cuda_stream)}
            if _version(ort.__version__) >= (1, 18):
                options["use_tf32"] = "0"  # fp32 means fp32: TF32 convolutions miss the 1e-4 bar
            providers = [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
        options = self.session_options
        if options is None:
            options = ort.SessionOptions()
            # idle ORT threads would otherwise spin for a while after each run, starving torch on the same cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as e:  # ORT raises its own exception types for unreadable or invalid graphs
            raise CheckpointFormatError(f"{self.path}: ONNX Runtime cannot load it: {e}") from e
        check_session_io(session.get_inputs(), self.io.inputs, "inputs", str(self.path))
        check_session_io(session.get_outputs(), self.io.outputs, "outputs", str(self.path))
        self._session = session
        self.providers = list(session.get_providers())
        if on_cuda and self.providers[0] == "CUDAExecutionProvider":
            self._stream = stream
            self._run_options = ort.RunOptions()
            # Run() would otherwise wait for the device before returning: the one host sync we do not want
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def _infer(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = int(feeds[self.io.inputs[0].name].shape[0])
        out = self._infer_bound(feeds, batch) if self._stream is not None else self._infer_host(feeds)
        for spec in self.io.outputs:
            want = spec.at_batch(batch)
            if tuple(out[spec.name].shape) != want:
                raise CheckpointFormatError(
                    f"{self.path}: {spec.name} has shape {tuple(out[spec.name].shape)}, expected {want}"
                )
        return out

    def _infer_host(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        arrays = {name: feeds[name].detach().to("cpu").contiguous().numpy() for name in self.io.input_names}
        results = self._session.run(list(self.io.output_names), arrays)
        return {
            name: torch.from_numpy(r).to(self.device, non_blocking=True)
            for name, r in zip(self.io.output_names, results, strict=True)
        }

    def _infer_bound(self, feeds: Mapping[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        assert self._stream is not None
        index = self.device.index
        current = torch.cuda.current_stream(self.device)
        inputs = {name: feeds[name].to(self.device).contiguous() for name in self.io.input_names}
        out = {s.name: torch.empty(s.at_batch(batch), device=self.device) for s in self.io.outputs}
        other_stream = current != self._stream
        if other_stream:  # the caller moved to another stream: order the two on the device, not on the host
            self._stream.wait_stream(current)
            for t in (*inputs.values(), *out.values()):
                t.record_stream(self._stream)
        binding = self._session.io_binding()
        for name, t in inputs.items():
            binding.bind_input(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        for name, t in out.items():
            binding.bind_output(name, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        self._session.run_with_iobinding(binding, self._run_options)
        if other_stream:
            current.wait_stream(self._stream)
        return out

    def _close(self) -> None:
        self._session = self._stream = self._run_options = None
