"""Which renderer a process uses, and the render server that renders for processes that
cannot hold their own EGL context.

Mesa's state does not survive fork: a process forked from one that already holds an
EGL context renders through a fresh helper process (`RemoteRenderer`, running `_serve`
of this module) instead, with the same results. `HARNESS_GL=subprocess` forces that.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

from harness_plugins.generators._shader_gl import Renderer
from harness_plugins.generators._shader_programs import Program

if TYPE_CHECKING:
    import numpy as np


class RemoteRenderer:
    """A Renderer in a fresh helper process (`python -m
    harness_plugins.generators._shader_server`), spoken to over its stdin/stdout.

    Used by a process forked from one that already holds an EGL context: Mesa's state
    (llvmpipe's rasteriser threads) does not survive fork, so such a child cannot render
    itself, while a freshly started interpreter can. Same programs, same bytes.
    """

    def __init__(self) -> None:
        import subprocess
        import sys

        self.pid = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness_plugins.generators._shader_server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self.known: dict[str, str | None] = {}
        import weakref

        weakref.finalize(self, _stop_server, self.proc)

    def _call(self, *request: Any) -> Any:
        import pickle

        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(len(data).to_bytes(8, "little") + data)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(8)
            if len(head) < 8:
                raise EOFError
            reply = pickle.loads(self.proc.stdout.read(int.from_bytes(head, "little")))
        except (BrokenPipeError, EOFError, OSError):
            raise HarnessError(
                f"the shader render process exited (status {self.proc.poll()}); see its messages above"
            ) from None
        status, value = reply
        if status == "error":
            raise HarnessError(value)
        return value

    def compile(self, program: Program) -> str | None:
        if program.digest not in self.known:
            self.known[program.digest] = self._call("compile", program)
        return self.known[program.digest]

    def render(self, programs: list[Program], rows: Any, size: int, fps: float) -> np.ndarray:
        for program in {p.digest: p for p in programs}.values():
            self.compile(program)
        return self._call("render", [p.digest for p in programs], rows, size, fps)


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
                digests, rows, size, fps = args
                reply = ("ok", gl.render([programs[d] for d in digests], rows, size, fps))
            else:
                reply = ("error", f"unknown request {op!r}")
        except HarnessError as exc:
            reply = ("error", str(exc))
        except Exception:
            reply = ("error", "shader render process failed:\n" + traceback.format_exc())
        data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(len(data).to_bytes(8, "little") + data)
        out.flush()


_RENDERER: Renderer | RemoteRenderer | None = None
_GL_OWNER: int | None = None  # the process that created an EGL context here (inherited by forks)


def renderer() -> Renderer | RemoteRenderer:
    """This process's renderer: in-process, unless this process was forked from one that
    already holds an EGL context (then a render server), or HARNESS_GL=subprocess."""
    global _RENDERER, _GL_OWNER
    pid = os.getpid()
    if _RENDERER is None or _RENDERER.pid != pid:
        forked = _GL_OWNER is not None and _GL_OWNER != pid
        if forked or os.environ.get("HARNESS_GL") == "subprocess":
            _RENDERER = RemoteRenderer()
        else:
            _RENDERER = Renderer()
            _GL_OWNER = pid
    return _RENDERER


if __name__ == "__main__":
    _serve()
