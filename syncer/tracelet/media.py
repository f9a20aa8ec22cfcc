"""Is an encoded image one a destination can take? One check for every destination.

A writer's image bytes travel unchanged, but W&B and Aim decode them with Pillow and refuse (or
run out of memory on) a truncated file, a bad chunk or a header declaring 2^30 x 2^30 pixels;
ClearML stores the bytes as a debug sample its UI cannot show. Such an image is refused once,
here, and quarantined (named in the report), instead of failing its batch on every sync.

- :func:`image_problem` with ``decode=False``: a cheap structural check, no pixel decoding:
  PNG (signature, every chunk's length and CRC, IHDR first, IDAT, IEND), JPEG (SOI, a frame
  header with the size before the scan, EOI at the end), GIF (header, trailer); the declared
  size must be > 0 and within Pillow's decompression-bomb limit.
- ``decode=True`` (where the destination decodes anyway): the same, then a full decode with
  Pillow. Bytes in another format (BMP, WebP ...) are judged by Pillow alone.
"""
from __future__ import annotations

import io
import struct
import zlib

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_DEFAULT_MAX_PIXELS = 2 * 89_478_485  # Pillow refuses (DecompressionBombError) above this


def max_pixels() -> int | None:
    """Pillow's refusal threshold: twice ``Image.MAX_IMAGE_PIXELS`` (None: no limit)."""
    try:
        from PIL import Image
    except ImportError:
        return _DEFAULT_MAX_PIXELS
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def image_problem(encoded: bytes, *, decode: bool = False) -> str | None:
    """None if the image is fine; else what is wrong, in one line (for the report)."""
    if encoded.startswith(_PNG_SIG):
        problem, size = _png(encoded)
    elif encoded.startswith(b"\xff\xd8"):
        problem, size = _jpeg(encoded)
    elif encoded[:6] in (b"GIF87a", b"GIF89a"):
        problem, size = _gif(encoded)
    elif not decode:
        return None  # a format we do not parse: sent as written, as before
    else:
        problem, size = None, None
    if problem is None and size is not None:
        problem = _size_problem(*size)
    if problem is None and decode:
        problem = _decode_problem(encoded)
    return problem


def _size_problem(width: int, height: int) -> str | None:
    if width <= 0 or height <= 0:
        return f"header declares {width}x{height} pixels"
    limit = max_pixels()
    if limit is not None and width * height > limit:
        return (f"header declares {width}x{height} pixels, over Pillow's decompression-bomb "
                f"limit of {limit} pixels")
    return None


def _png(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    pos, n = len(_PNG_SIG), len(data)
    size = None
    seen_idat = False
    first = True
    while True:
        if pos + 8 > n:
            return f"truncated PNG: ends at byte {n} before its IEND chunk", size
        length, ctype = struct.unpack_from(">I4s", data, pos)
        name = ctype.decode("latin-1")
        if length > 0x7FFFFFFF:
            return f"corrupt PNG: chunk {name!r} at byte {pos} declares {length} bytes", size
        end = pos + 12 + length
        if end > n:
            return (f"truncated PNG: chunk {name} at byte {pos} needs {length} bytes, the file "
                    f"ends at byte {n}"), size
        crc = struct.unpack_from(">I", data, end - 4)[0]
        if zlib.crc32(data[pos + 4:end - 4]) & 0xFFFFFFFF != crc:
            return f"corrupt PNG: chunk {name} at byte {pos} has a bad CRC", size
        if first:
            if ctype != b"IHDR" or length != 13:
                return "corrupt PNG: the first chunk is not a 13-byte IHDR", size
            size = struct.unpack_from(">II", data, pos + 8)
            first = False
        elif ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"IEND":
            if not seen_idat:
                return "corrupt PNG: no IDAT chunk (no pixel data)", size
            return None, size
        pos = end


# JPEG start-of-frame markers (baseline, progressive, lossless ...): not DHT/JPG/DAC
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    pos, n = 2, len(data)
    size = None
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > n:
            return f"truncated JPEG: ends at byte {n} inside its headers", size
        if data[pos] != 0xFF:
            return f"corrupt JPEG: no marker at byte {pos}", size
        marker = data[pos + 1]
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2  # standalone markers
            continue
        if marker == 0xD9:
            return "corrupt JPEG: end-of-image before any scan", size
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if length < 2 or pos + 2 + length > n:
            return f"truncated JPEG: segment 0x{marker:02X} at byte {pos} runs past the end", size
        if marker in _SOF:
            if length < 7:
                return f"corrupt JPEG: frame header at byte {pos} is too short", size
            height, width = struct.unpack_from(">HH", data, pos + 5)
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows, up to EOI
            if size is None:
                return "corrupt JPEG: scan before any frame header (no image size)", size
            tail = data.rstrip(b"\x00")  # some writers pad the file
            if not tail.endswith(b"\xff\xd9"):
                return f"truncated JPEG: no end-of-image marker (file ends at byte {n})", size
            return None, size
        pos += 2 + length


def _gif(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    if len(data) < 13:
        return f"truncated GIF: {len(data)} bytes, shorter than its header", None
    size = struct.unpack_from("<HH", data, 6)
    if not data.rstrip(b"\x00").endswith(b";"):
        return f"truncated GIF: no trailer (file ends at byte {len(data)})", size
    return None, size


def _decode_problem(encoded: bytes) -> str | None:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(encoded)) as im:
                width, height = im.size
                problem = _size_problem(width, height)
                if problem:
                    return problem
                im.load()
    except Image.UnidentifiedImageError:
        return "not an image format Pillow knows"
    except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError, its own errors ...
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"Pillow cannot decode it ({type(e).__name__}: {text[:200]})"
    return None
