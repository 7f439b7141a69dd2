"""Which renderer a process uses, and the render server that renders for processes that
cannot hold their own EGL context.

Mesa's state does not survive fork: a process forked from one that already holds an
EGL context renders through a fresh helper process (`RemoteRenderer`, running `_serve`
of this module) instead, with the same results. `HARNESS_GL=subprocess` forces that.

Every render has a time limit, since a program may loop (almost) without end and a GL
call cannot be interrupted. The render server is killed when its batch runs past the
limit and started afresh for the next one; the in-process renderer does its GL work on a
thread of its own, which is abandoned when a batch runs past the limit (the process
renders through a render server from then on).
"""

from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

from harness.errors import HarnessError

from harness_plugins.generators._shader_gl import Renderer
from harness_plugins.generators._shader_programs import Program

if TYPE_CHECKING:
    import numpy as np


class RenderTimeout(HarnessError):
    """A batch took longer than its render timeout; the message names its programs."""


def _render_timeout(programs: list[Program], size: int, timeout: float) -> RenderTimeout:
    names = list(dict.fromkeys(f"{p.name!r} ({p.origin})" for p in programs))
    listed = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return RenderTimeout(
        f"rendering {len(programs)} image(s) of {size} px took longer than the render timeout of {timeout:.3g} s; "
        f"a program that loops too long is among: {listed}"
    )


class LocalRenderer:
    """A Renderer in this process, driven from a GL thread of its own so that the caller
    can stop waiting for a batch: a GL call cannot be interrupted. After a timeout the GL
    thread is left to finish (or not) and `stuck` is set; the renderer is not used again."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.stuck = False
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future] | None] = queue.SimpleQueue()
        threading.Thread(target=self._work, name="shader-gl", daemon=True).start()
        try:
            self._gl: Renderer = self._run(Renderer)
        except BaseException:
            self._jobs.put(None)
            raise

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, future = item
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)

    def _run(self, job: Callable[[], Any], timeout: float | None = None) -> Any:
        future: Future = Future()
        self._jobs.put((job, future))
        return future.result(timeout)

    def compile(self, program: Program) -> str | None:
        return self._run(lambda: self._gl.compile(program))

    def render(
        self, programs: list[Program], rows: Any, size: int, fps: float, timeout: float, pipeline: str = "graphics", on: Any = None,
    ) -> Any:
        """`Renderer.render` on the GL thread (a tensor on `on`'s CUDA device where interop is had)."""
        try:
            return self._run(lambda: self._gl.render(programs, rows, size, fps, pipeline, on), timeout)
        except TimeoutError:
            self.stuck = True
            raise _render_timeout(programs, size, timeout) from None

    def seconds(self) -> dict[str, float]:
        """Seconds spent so far by part of the rendering (`Renderer.seconds`)."""
        return self._run(lambda: dict(self._gl.seconds))


class RemoteRenderer:
    """A Renderer in a fresh helper process (`python -m
    harness_plugins.generators._shader_server`), spoken to over its stdin/stdout.

    Used by a process forked from one that already holds an EGL context: Mesa's state
    (llvmpipe's rasteriser threads) does not survive fork, so such a child cannot render
    itself, while a freshly started interpreter can. Same programs, same bytes. A render
    past its timeout kills the process; the next request starts a new one.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.proc: Any = None
        self.known: dict[str, str | None] = {}  # program digest -> GLSL log (None: compiled) in `proc`

    def _start(self) -> None:
        import subprocess
        import sys
        import weakref

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness_plugins.generators._shader_server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        weakref.finalize(self, _stop_server, self.proc)

    def _call(self, *request: Any, timeout: float | None = None) -> Any:
        """Send one request and return its reply; TimeoutError (the server killed) when no
        reply has begun within `timeout` seconds."""
        import pickle
        import select

        if self.proc is None:
            self._start()
        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(len(data).to_bytes(8, "little") + data)
            self.proc.stdin.flush()
            replied = timeout is None or bool(select.select([self.proc.stdout], [], [], timeout)[0])
            if replied:
                head = self.proc.stdout.read(8)
                if len(head) < 8:
                    raise EOFError
                reply = pickle.loads(self.proc.stdout.read(int.from_bytes(head, "little")))
        except (BrokenPipeError, EOFError, OSError):
            raise HarnessError(
                f"the shader render process exited (status {self.proc.poll()}); see its messages above"
            ) from None
        if not replied:
            self.proc.kill()
            self.proc.wait()
            self.proc, self.known = None, {}
            raise TimeoutError
        status, value = reply
        if status == "error":
            raise HarnessError(value)
        return value

    def compile(self, program: Program) -> str | None:
        if program.digest not in self.known:
            self.known[program.digest] = self._call("compile", program)
        return self.known[program.digest]

    def render(
        self, programs: list[Program], rows: Any, size: int, fps: float, timeout: float, pipeline: str = "graphics", on: Any = None,
    ) -> np.ndarray:
        """`Renderer.render` in the render server; always into host memory (`on` is not
        used: the server's GL context cannot hand frames to this process's CUDA)."""
        for program in {p.digest: p for p in programs}.values():
            self.compile(program)
        try:
            return self._call("render", [p.digest for p in programs], rows, size, fps, pipeline, timeout=timeout)
        except TimeoutError:
            raise _render_timeout(programs, size, timeout) from None

    def seconds(self) -> dict[str, float]:
        """Seconds spent so far by part of the rendering in the render server (none before it starts)."""
        return self._call("seconds") if self.proc is not None else {}


def _stop_server(proc: Any) -> None:
    try:
        proc.stdin.close()
        proc.wait(timeout=5)
    except Exception:  # pragma: no cover - best effort at exit
        proc.kill()


def _serve() -> None:
    """The render server's loop: length-prefixed pickles in on stdin, out on stdout."""
    import pickle
    import sys
    import traceback

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the protocol stream
    gl: Renderer | None = None
    programs: dict[str, Program] = {}
    while True:
        head = inp.read(8)
        if len(head) < 8:
            return
        op, *args = pickle.loads(inp.read(int.from_bytes(head, "little")))
        try:
            if gl is None:
                gl = Renderer()
            if op == "compile":
                programs[args[0].digest] = args[0]
                reply: Any = ("ok", gl.compile(args[0]))
            elif op == "render":
                digests, rows, size, fps, pipeline = args
                reply = ("ok", gl.render([programs[d] for d in digests], rows, size, fps, pipeline))
            elif op == "seconds":
                reply = ("ok", dict(gl.seconds))
            else:
                reply = ("error", f"unknown request {op!r}")
        except HarnessError as exc:
            reply = ("error", str(exc))
        except Exception:
            reply = ("error", "shader render process failed:\n" + traceback.format_exc())
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(len(data).to_bytes(8, "little") + data)
        out.flush()


_RENDERER: LocalRenderer | RemoteRenderer | None = None
_GL_OWNER: int | None = None  # the process that created an EGL context here (inherited by forks)


def renderer() -> LocalRenderer | RemoteRenderer:
    """This process's renderer: in-process, unless this process was forked from one that
    already holds an EGL context, or its in-process renderer timed out (then a render
    server), or HARNESS_GL=subprocess."""
    global _RENDERER, _GL_OWNER
    pid = os.getpid()
    stuck = isinstance(_RENDERER, LocalRenderer) and _RENDERER.stuck
    if _RENDERER is None or _RENDERER.pid != pid or stuck:
        forked = _GL_OWNER is not None and _GL_OWNER != pid
        if forked or stuck or os.environ.get("HARNESS_GL") == "subprocess":
            _RENDERER = RemoteRenderer()
        else:
            _RENDERER = LocalRenderer()
            _GL_OWNER = pid
    return _RENDERER


if __name__ == "__main__":
    _serve()
