"""Rendered frames handed to CUDA without leaving the GPU: the CUDA runtime's OpenGL
interop (cudaGraphicsGLRegisterBuffer and its kin), called through ctypes.

A consumer of shader images on the same GPU (K-Means Leaves runs its 2-means there)
would otherwise wait for each frame to be read back into host memory and copied up
again, two trips of six base images per KML Mixup image. Here a frame's bytes, already
laid out as the result by the renderer's reorder pass, are read into a GL buffer that
stays in device memory, and CUDA copies them from there into a torch tensor.

Interop needs the GL context and CUDA on the same GPU, and the libraries of both in
this process: `GLToCuda.open` says why not where it cannot be had, and the renderer
then reads back through the host as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from typing import Any

REGISTER_READ_ONLY = 1  # cudaGraphicsRegisterFlagsReadOnly
DEVICE_TO_DEVICE = 3  # cudaMemcpyDeviceToDevice
GL_DEVICE_LIST_ALL = 1  # cudaGLDeviceListAll


def _runtime_library() -> str | None:
    """The CUDA runtime library torch loaded (listed in this process's memory map), else
    one the system or the nvidia-cuda-runtime package holds."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "/libcudart.so" in path:
                    return path
    except OSError:
        pass
    found = ctypes.util.find_library("cudart")
    if found:
        return found
    try:
        import nvidia.cuda_runtime  # type: ignore[import-not-found]
    except ImportError:
        return None
    for folder in nvidia.cuda_runtime.__path__:
        candidates = sorted(glob.glob(os.path.join(folder, "lib", "libcudart.so*")))
        if candidates:
            return candidates[-1]
    return None


class InteropError(RuntimeError):
    """A CUDA call of the interop failed; the message names the call and CUDA's error."""


class GLToCuda:
    """Copies GL buffers of the current GL context into CUDA memory of one device.

    Every call must come from the thread on which the GL context is current (the
    renderer's GL thread). Copies are queued on the stream the consumer named, so that
    its later work waits for them; mapping a buffer makes the copy wait for the GL
    commands issued before it, unmapping makes later GL commands wait for the copy."""

    def __init__(self, runtime: Any, device: int) -> None:
        self.runtime = runtime
        self.device = device
        self.registered: dict[int, ctypes.c_void_p] = {}  # GL buffer name -> CUDA resource

    @classmethod
    def open(cls, device: Any) -> tuple[GLToCuda | None, str | None]:
        """(an interop for the torch device `device`, None), or (None, why it cannot be
        had). Called on the GL thread."""
        import torch

        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            return None, f"{device} is not a CUDA device this process sees"
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.init()
        path = _runtime_library()
        if path is None:
            return None, "no CUDA runtime library (libcudart) found"
        try:
            runtime = ctypes.CDLL(path)
            _declare(runtime)
        except (OSError, AttributeError) as exc:
            return None, f"the CUDA runtime {path} lacks OpenGL interop ({exc})"
        interop = cls(runtime, index)
        try:
            interop.check(runtime.cudaSetDevice(index), "cudaSetDevice")
            on = interop.gl_devices()
        except InteropError as exc:
            return None, str(exc)
        if on is not None and index not in on:
            return None, f"the GL context renders on CUDA device(s) {on}, not on cuda:{index}"
        return interop, None

    def check(self, status: int, call: str) -> None:
        if status:
            self.runtime.cudaGetLastError()  # clear it: a later call would report it again
            text = self.runtime.cudaGetErrorString(status).decode(errors="replace")
            raise InteropError(f"{call} failed with CUDA error {status}: {text}")

    def gl_devices(self) -> list[int] | None:
        """The CUDA devices the current GL context renders on (None: the runtime cannot say)."""
        try:
            query = self.runtime.cudaGLGetDevices
        except AttributeError:
            return None
        query.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_int), ctypes.c_uint, ctypes.c_int]
        query.restype = ctypes.c_int
        count, devices = ctypes.c_uint(0), (ctypes.c_int * 8)()
        self.check(query(ctypes.byref(count), devices, 8, GL_DEVICE_LIST_ALL), "cudaGLGetDevices (is the GL context on an NVIDIA GPU?)")
        return list(devices[: count.value])

    def copy(self, buffer: int, nbytes: int, target: int, stream: int) -> None:
        """Queue on the CUDA stream `stream` (a handle; 0 the legacy default) the copy of the
        first `nbytes` of GL buffer `buffer` to the CUDA address `target` (bytes of a torch
        tensor on this device)."""
        self.check(self.runtime.cudaSetDevice(self.device), "cudaSetDevice")
        if buffer not in self.registered:
            resource = ctypes.c_void_p()
            self.check(self.runtime.cudaGraphicsGLRegisterBuffer(ctypes.byref(resource), buffer, REGISTER_READ_ONLY),
                       "cudaGraphicsGLRegisterBuffer")
            self.registered[buffer] = resource
        resource = self.registered[buffer]
        queue = ctypes.c_void_p(stream)
        self.check(self.runtime.cudaGraphicsMapResources(1, ctypes.byref(resource), queue), "cudaGraphicsMapResources")
        try:
            pointer, size = ctypes.c_void_p(), ctypes.c_size_t()
            self.check(self.runtime.cudaGraphicsResourceGetMappedPointer(ctypes.byref(pointer), ctypes.byref(size), resource),
                       "cudaGraphicsResourceGetMappedPointer")
            if size.value < nbytes:
                raise InteropError(f"GL buffer {buffer} maps {size.value} bytes, fewer than the {nbytes} to copy")
            self.check(self.runtime.cudaMemcpyAsync(ctypes.c_void_p(target), pointer, nbytes, DEVICE_TO_DEVICE, queue),
                       "cudaMemcpyAsync")
        finally:
            self.check(self.runtime.cudaGraphicsUnmapResources(1, ctypes.byref(resource), queue), "cudaGraphicsUnmapResources")

    def forget(self, buffer: int) -> None:
        """Unregister GL buffer `buffer` (before it is released)."""
        resource = self.registered.pop(buffer, None)
        if resource is not None:
            self.runtime.cudaGraphicsUnregisterResource(resource)


def _declare(runtime: Any) -> None:
    """Argument and result types of the runtime functions used (AttributeError: absent)."""
    c_int, c_uint, c_void_p, c_size_t = ctypes.c_int, ctypes.c_uint, ctypes.c_void_p, ctypes.c_size_t
    pointer = ctypes.POINTER
    signatures = {
        "cudaSetDevice": [c_int],
        "cudaGetLastError": [],
        "cudaGraphicsGLRegisterBuffer": [pointer(c_void_p), c_uint, c_uint],
        "cudaGraphicsMapResources": [c_int, pointer(c_void_p), c_void_p],
        "cudaGraphicsResourceGetMappedPointer": [pointer(c_void_p), pointer(c_size_t), c_void_p],
        "cudaGraphicsUnmapResources": [c_int, pointer(c_void_p), c_void_p],
        "cudaGraphicsUnregisterResource": [c_void_p],
        "cudaMemcpyAsync": [c_void_p, c_void_p, c_size_t, c_int, c_void_p],
    }
    for name, arguments in signatures.items():
        function = getattr(runtime, name)
        function.argtypes, function.restype = arguments, c_int
    runtime.cudaGetErrorString.argtypes, runtime.cudaGetErrorString.restype = [c_int], ctypes.c_char_p
