"""Image files to the base64 column of OFA's TSVs: the original bytes, or re-encoded JPEG when asked.

Copying keeps the file exactly (OFA's readers open any format PIL reads); the image is still decoded
in full once, so that a missing, truncated or undecodable file is caught here rather than in training.
``--max-image-size`` / ``--jpeg-quality`` re-encode to JPEG (smaller TSVs, faster loading), and
the scale factors returned let boxes follow the image.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Optional, Tuple

from PIL import Image, UnidentifiedImageError

from ..errors import InvalidDataError, OptionError

#: What PIL raises for bytes that are not a complete image of a known format.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
#: JPEG quality when only --max-image-size asks for re-encoding.
DEFAULT_JPEG_QUALITY = 95


@dataclass(frozen=True)
class EncodedImage:
    """An image as written: ``base64`` of the bytes, the ORIGINAL size, and written/original scale per axis."""

    base64: str
    width: int
    height: int
    scale_x: float
    scale_y: float
    source_bytes: int
    written_bytes: int


@dataclass(frozen=True)
class ImageEncoder:
    """How images are written: copied (both options None) or re-encoded as JPEG, the longer side at most
    ``max_image_size`` pixels (aspect ratio kept; smaller images keep their size)."""

    max_image_size: Optional[int] = None
    jpeg_quality: Optional[int] = None

    def __post_init__(self):
        if self.max_image_size is not None and self.max_image_size < 1:
            raise OptionError(f"--max-image-size must be positive, got {self.max_image_size}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise OptionError(f"--jpeg-quality must be between 1 and 100, got {self.jpeg_quality}")

    @property
    def reencodes(self) -> bool:
        return self.max_image_size is not None or self.jpeg_quality is not None

    def encode(self, path: str) -> EncodedImage:
        """The image at ``path`` as written; ``InvalidDataError(reason)`` for a missing or undecodable file."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise InvalidDataError(f"image file not found: {path}") from None
        except (IsADirectoryError, PermissionError) as err:
            raise InvalidDataError(f"image file not readable: {path} ({err.strerror})") from None
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except _IMAGE_ERRORS as err:
            detail = "not an image format PIL can read" if isinstance(err, UnidentifiedImageError) else str(err)
            raise InvalidDataError(f"undecodable or truncated image {path} ({type(err).__name__}: {detail})") from None
        width, height = image.size
        written, (new_width, new_height) = (self._reencode(image) if self.reencodes else (data, image.size))
        return EncodedImage(base64.b64encode(written).decode("ascii"), width, height, new_width / width,
                            new_height / height, len(data), len(written))

    def _reencode(self, image: Image.Image) -> Tuple[bytes, Tuple[int, int]]:
        image = image.convert("RGB")  # what OFA's readers convert to; JPEG holds no alpha or palette
        width, height = image.size
        if self.max_image_size is not None and max(width, height) > self.max_image_size:
            ratio = self.max_image_size / max(width, height)
            image = image.resize((max(1, round(width * ratio)), max(1, round(height * ratio))), Image.BICUBIC)
        buffer = io.BytesIO()
        quality = DEFAULT_JPEG_QUALITY if self.jpeg_quality is None else self.jpeg_quality
        image.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue(), image.size

