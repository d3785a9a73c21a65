"""Image files through Pillow: PNG, JPEG, TIFF and BMP, 8 or 16 bit, grey, RGB or RGBA.

8-bit grey and RGB stay uint8 (display values). 16-bit grey (PIL's "I;16" modes, or "I" from older Pillow) and
32-bit float TIFFs ("F") become float32, to be scaled by percentiles. Palette, RGBA, CMYK and the other colour
modes become RGB (alpha dropped); bilevel and grey-with-alpha become grey. PIL reads 16-bit RGB PNGs as 8-bit RGB.

PIL's decompression-bomb limit stays as it is (``Image.MAX_IMAGE_PIXELS``, about 89 megapixels): a file whose
header claims more pixels is refused before its pixels are read. Truncated files are refused, never padded
(``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False). Multi-page TIFFs and animated images are multi-frame.
EXIF orientation is not applied: medical images are stored as acquired.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ...errors import DiffauditError
from .files import Unreadable, sha256_bytes
from .intensity import Decoded

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_GREY = {"L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def _array(im: Image.Image) -> np.ndarray:
    """[C, H, W]: uint8 for 8-bit grey and colour, float32 for deeper grey."""
    if im.mode in ("1", "LA", "La"):
        im = im.convert("L")
    elif im.mode not in _GREY and im.mode != "RGB":
        im = im.convert("RGB")
    x = np.asarray(im)
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
    return x[None] if x.ndim == 2 else np.ascontiguousarray(x.transpose(2, 0, 1))


class _Pages:
    def __init__(self, pages: list[np.ndarray], sha256: str) -> None:
        self.pages, self.sha256, self.patient = pages, sha256, None
        self.frames = [None] if len(pages) == 1 else list(range(len(pages)))

    def shape(self, frame: int | None) -> tuple[int, ...]:
        return self.pages[frame or 0].shape

    def decode(self, record) -> Decoded:
        return Decoded(self.pages[record.frame or 0])


class ImageReader:
    """Reader of the ``folder`` kind; ``frames="all"`` takes every page of a multi-page file."""

    kind = "folder"

    def __init__(self, *, frames: str = "single") -> None:
        self.frames = frames

    def accepts(self, name: str) -> bool:
        return name.lower().endswith(EXTENSIONS)

    def open(self, path: Path, name: str) -> _Pages:
        data = path.read_bytes()
        try:
            im = Image.open(io.BytesIO(data))
            if im.width * im.height > Image.MAX_IMAGE_PIXELS:  # PIL only warns up to twice the limit
                raise Image.DecompressionBombError(f"{im.width}x{im.height}")
            n = getattr(im, "n_frames", 1)
            if n > 1 and self.frames != "all":
                raise DiffauditError(f"{path} holds {n} frames; pass frames='all' (--frames all) to take one image per frame")
            pages = []
            for k in range(n):
                im.seek(k)
                im.load()
                pages.append(_array(im))
        except Image.DecompressionBombError:
            raise Unreadable(f"its header claims more pixels than PIL's decompression-bomb limit "
                             f"(Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}); refused unread") from None
        except UnidentifiedImageError:
            raise Unreadable("not an image file PIL can read") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
            raise Unreadable(f"truncated or corrupt image ({err})") from None
        return _Pages(pages, sha256_bytes(data))
