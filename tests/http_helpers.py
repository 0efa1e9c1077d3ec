"""HTTP helpers shared by the service tests (rtcore serve and Ray Serve speak the same contract)."""

import http.client
import io
import resource
import socket
import threading
import time
import uuid

import PIL.Image
import uvicorn

from rtcore.demo import sample_image


class Server:
    """uvicorn in a background thread on 127.0.0.1 and an OS-chosen port; stopped by the fixture."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(fields, image_bytes=None):
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    if image_bytes is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + image_bytes + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


FIELDS = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
              num_inference_steps="4", seed="3")


def post(port, fields=FIELDS, image=True, body=None, content_type=None, timeout=60, path="/edit", headers=False):
    """POST /edit → (status, body bytes), and the response headers (lower-case names) with ``headers``; ``image``:
    True for the 64x64 sample, False for none, or PNG bytes."""
    if body is None:
        data = png(sample_image(64, 64)) if image is True else (image or None)
        body, content_type = multipart(fields, data)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if headers:
        return response.status, data, {k.lower(): v for k, v in response.getheaders()}
    return response.status, data


def rss_mb():
    """Current resident set size (not the high-water mark, which earlier tests may already have set)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data



def pixel_bomb(side=12000):
    """A PNG of a few KB that declares side x side pixels (about 430 MB once decoded as RGB)."""
    buffer = io.BytesIO()
    PIL.Image.new("1", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def post_chunked(port, total_bytes, path="/edit", chunk=1 << 20, timeout=60):
    """POSTs ``total_bytes`` of a multipart body with Transfer-Encoding: chunked (no Content-Length) on a raw
    socket; returns the status the server answered, which may come before the whole body was sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 "Content-Type: multipart/form-data; boundary=x\r\n\r\n".encode())
    sent = 0
    try:
        while sent < total_bytes:
            sock.sendall(f"{chunk:x}\r\n".encode() + b"a" * chunk + b"\r\n")
            sent += chunk
        sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the end of the body: what a limit should do
    response = http.client.HTTPResponse(sock)
    response.begin()
    status = response.status
    sock.close()
    return status
