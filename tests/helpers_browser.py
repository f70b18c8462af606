"""A headless Chromium driven over the DevTools protocol, for tests of HTML views.

No third-party client: the DevTools endpoint is a WebSocket on 127.0.0.1, and the few frames we
need (masked text frames out; text, continuation, ping and close frames in) are written here on the
standard library's ``socket``. Chromium is started with ``--remote-debugging-port=0`` and a fresh
profile folder, and reports its port in ``DevToolsActivePort`` there. Only local ``file://`` pages
are loaded; nothing leaves the machine.

Errors a page raises are collected from three protocol events: ``Runtime.exceptionThrown``
(uncaught exceptions and syntax errors), ``Runtime.consoleAPICalled`` with type ``error`` /
``assert`` (``console.error``), and ``Log.entryAdded`` with level ``error`` (e.g. a failed resource
load, a blocked request).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional


def find_chromium() -> Optional[str]:
    """The Chromium executable (Debian's ``chromium`` package), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class WebSocket:
    """A minimal RFC 6455 client: text messages only, client frames masked."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the WebSocket handshake")
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n")[0]:
            raise ConnectionError(f"WebSocket handshake refused: {status.decode(errors='replace')}")
        self._buf = rest

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionError("DevTools connection closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        head = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode())

    def recv(self) -> str:
        parts: List[bytes] = []
        while True:
            b0, b1 = self._read(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if fin:
                    return b"".join(parts).decode()

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self.sock.close()


def _browser_env() -> Dict[str, str]:
    """The browser's environment: ours, minus the sanitizer runtime that tests/run_sanitized.sh
    preloads into every child (Chromium is not glassbox and does not run under ASan)."""
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "PYTHONMALLOC"):
        env.pop(k, None)
    return env


class Browser:
    """One headless Chromium with one page. Use as a context manager."""

    def __init__(self, exe: str, width: int = 1400, height: int = 1000, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="gb-chromium-")
        self._log = open(Path(self.profile).with_suffix(".log"), "wb")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-sync", "--mute-audio",
             "--disable-component-update", "--disable-default-apps", f"--window-size={width},{height}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True, env=_browser_env())
        try:
            port = self._port()
            self.ws = self._page_socket(port)
            self._id = 0
            self.events: List[Dict[str, Any]] = []
            for domain in ("Runtime", "Log", "Page"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        except Exception:
            self.close()
            raise

    def _port(self) -> int:
        path = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if path.exists():
                lines = path.read_text().split("\n")
                if lines and lines[0].strip().isdigit():
                    return int(lines[0])
            if self.proc.poll() is not None:
                self._log.flush()
                err = Path(self._log.name).read_text(errors="replace")
                raise RuntimeError(f"chromium exited with code {self.proc.returncode}: {err[-2000:]}")
            time.sleep(0.1)
        raise TimeoutError("chromium did not report its DevTools port")

    def _page_socket(self, port: int) -> WebSocket:
        deadline = time.time() + self.timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.loads(r.read())
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                url = pages[0]["webSocketDebuggerUrl"]
                break
            if time.time() > deadline:
                raise TimeoutError("chromium has no page target")
            time.sleep(0.1)
        rest = url.split("://", 1)[1]
        hostport, path = rest.split("/", 1)
        host, p = hostport.rsplit(":", 1)
        return WebSocket(host, int(p), "/" + path, timeout=self.timeout)

    # -- protocol ---------------------------------------------------------------------------
    def call(self, method: str, **params: Any) -> Dict[str, Any]:
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"no answer to {method}")

    def wait_event(self, method: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        for i, ev in enumerate(self.events):
            if ev["method"] == method:
                return self.events.pop(i)
        deadline = time.time() + (timeout or self.timeout)
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == method:
                return msg
            if "method" in msg:
                self.events.append(msg)
        raise TimeoutError(f"no {method} event")

    def errors(self) -> List[str]:
        """Error messages collected so far (see module docstring). Pumps pending events first."""
        self.evaluate("0")  # a round trip: events sent before it have arrived
        out = []
        for ev in self.events:
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append("log: " + str(p["entry"].get("text")))
        return out

    def goto(self, url: str) -> None:
        """A fresh load of ``url`` (through about:blank, so that a URL differing only in its
        #fragment loads anew instead of being a same-document navigation); clears the events."""
        for u in ("about:blank", url):
            self.events.clear()
            self.call("Page.navigate", url=u)
            self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluate({expression[:80]!r}): {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def screenshot(self, path: Optional[Path] = None) -> bytes:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        if path is not None:
            Path(path).write_bytes(png)
        return png

    def mouse(self, kind: str, x: float, y: float) -> None:
        """kind: "move" or "click" at page coordinates."""
        if kind == "move":
            self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
            return
        for t in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=t, x=x, y=y, button="left", clickCount=1)

    def key(self, key: str, code: int) -> None:
        for t in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=t, key=key, code=key, windowsVirtualKeyCode=code)

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the browser and its own child processes
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
