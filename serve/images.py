"""Images of a chat request, read under limits: data: URLs always; http(s) and file URLs only when allowed.

    image = read_image(url, limits)       # PIL RGB image, or an ApiError naming the limit or the problem

Every refusal is an ApiError (serve/errors.py) the app turns into an OpenAI-style error body: too
many bytes or pixels -> 413 (the pixel count is read from the header, before any decoding, so a
decompression bomb never unpacks), bad base64, bytes that are no image, a refused URL scheme -> 400.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, UnidentifiedImageError

from serve.errors import ApiError

FETCH_SECONDS = 30  # the whole download of a remote image
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # what is decoded: no EPS (Ghostscript) and the like


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 2**20
    max_pixels: int = 4096 * 4096
    allow_remote: bool = False
    allow_local: bool = False


def to_data_url(image: Image.Image) -> str:
    """An image as the PNG data: URL a chat request carries (the clients' side: demo, bench)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def read_image(url: str, limits: ImageLimits) -> Image.Image:
    return decode_image(image_bytes(url, limits), limits)


def image_bytes(url: str, limits: ImageLimits) -> bytes:
    if url[:5].lower() == "data:":  # URL schemes are case-insensitive
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise ApiError(
                400, "image_url data: URLs must be base64 (data:image/png;base64,...)", "image_url"
            )
        if len(payload) * 3 // 4 > limits.max_bytes:
            raise too_large(len(payload) * 3 // 4, limits)
        payload = "".join(unquote(payload).split())  # MIME line breaks, %-escapes
        payload += "=" * (-len(payload) % 4)  # padding left out
        try:
            if "-" in payload or "_" in payload:  # the URL-safe alphabet
                return base64.b64decode(payload, altchars=b"-_", validate=True)
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "image_url: the data: URL is not valid base64", "image_url") from None
    scheme = urlparse(url).scheme
    if scheme in ("http", "https"):
        if not limits.allow_remote:
            raise ApiError(
                400,
                "image_url: http(s) URLs are refused (start the server with --allow-remote-images)",
                "image_url",
            )
        return fetch(url, limits)
    if scheme == "file":
        if not limits.allow_local:
            raise ApiError(
                400,
                "image_url: file URLs are refused (start the server with --allow-local-images)",
                "image_url",
            )
        path = Path(unquote(urlparse(url).path))
        if not path.is_file():
            raise ApiError(400, f"image_url: no such file {path}", "image_url")
        if path.stat().st_size > limits.max_bytes:
            raise too_large(path.stat().st_size, limits)
        return path.read_bytes()
    raise ApiError(
        400, f"image_url: unsupported URL scheme {scheme or '(none)'!r}; send a data: URL", "image_url"
    )


def fetch(url: str, limits: ImageLimits) -> bytes:
    import httpx

    chunks, total, deadline = [], 0, time.monotonic() + FETCH_SECONDS
    try:
        with httpx.stream("GET", url, timeout=10.0, follow_redirects=True) as response:
            response.raise_for_status()
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > limits.max_bytes:
                    raise too_large(total, limits)
                if time.monotonic() > deadline:  # a server feeding a byte at a time
                    raise ApiError(
                        400, f"image_url: {url} took over {FETCH_SECONDS} s to download", "image_url"
                    )
                chunks.append(chunk)
    except httpx.HTTPError as error:
        raise ApiError(400, f"image_url: could not fetch {url}: {error}", "image_url") from None
    return b"".join(chunks)


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    if len(data) > limits.max_bytes:
        raise too_large(len(data), limits)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ApiError(
                413,
                f"image has {width}x{height} pixels, over the limit of {limits.max_pixels:,} pixels",
                "image_url",
            )
        image.load()
        return to_rgb(image)
    except ApiError:
        raise
    except Image.DecompressionBombError as error:  # PIL's own, larger limit tripped at open
        raise ApiError(
            413, f"{error} The server's limit is {limits.max_pixels:,} pixels.", "image_url"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ApiError(400, f"image_url: the bytes are not a readable image ({error})", "image_url") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. PIL's own conversion clips 16-bit and 32-bit grey to 255, so those are scaled first."""
    if image.mode.startswith("I") or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        else:
            top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(np.rint(values / top * 255), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def too_large(size: int, limits: ImageLimits) -> ApiError:
    return ApiError(413, f"image is {size:,} bytes, over the limit of {limits.max_bytes:,}", "image_url")
