"""numpy <-> Qt image conversions, PNG bytes, smooth resizing. Canvas images are RGBA uint8."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
from PySide6.QtGui import QIcon, QImage, QPixmap

from engine.errors import BadInputError

_F = QImage.Format
_FORMATS = {2: _F.Format_Grayscale8, 3: _F.Format_RGB888, 4: _F.Format_RGBA8888}


def to_qimage(a: np.ndarray) -> QImage:
    """(H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA uint8 -> a QImage that owns a copy of the pixels."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    channels = 2 if a.ndim == 2 else a.shape[2]
    h, w = a.shape[:2]
    return QImage(a.data, w, h, a.strides[0], _FORMATS[channels]).copy()


def from_qimage(image: QImage) -> np.ndarray:
    """Any QImage -> (H, W, 4) RGBA uint8."""
    image = image.convertToFormat(QImage.Format.Format_RGBA8888)
    h, w = image.height(), image.width()
    buf = np.frombuffer(image.constBits(), np.uint8, count=image.bytesPerLine() * h)
    return buf.reshape(h, image.bytesPerLine())[:, : w * 4].reshape(h, w, 4).copy()


def grey_from_qimage(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format.Format_Grayscale8)
    h, w = image.height(), image.width()
    buf = np.frombuffer(image.constBits(), np.uint8, count=image.bytesPerLine() * h)
    return buf.reshape(h, image.bytesPerLine())[:, :w].copy()


def png_bytes(a: np.ndarray) -> bytes:
    data = QByteArray()
    buf = QBuffer(data)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    if not to_qimage(a).save(buf, "PNG"):
        raise OSError("PNG encoding failed")
    buf.close()
    return bytes(data.data())


def decode_png(data: bytes, grey: bool = False) -> np.ndarray:
    image = QImage.fromData(data, "PNG")
    if image.isNull():
        raise BadInputError("corrupt PNG data")
    return grey_from_qimage(image) if grey else from_qimage(image)


def resize(a: np.ndarray, width: int, height: int) -> np.ndarray:
    """Smooth (bilinear) resize of an RGBA image."""
    if a.shape[1] == width and a.shape[0] == height:
        return a
    scaled = to_qimage(a).scaled(width, height, Qt.AspectRatioMode.IgnoreAspectRatio,
                                 Qt.TransformationMode.SmoothTransformation)
    return from_qimage(scaled)


def rgba(a: np.ndarray) -> np.ndarray:
    """RGB or RGBA -> RGBA (opaque when there was no alpha)."""
    a = np.asarray(a, dtype=np.uint8)
    if a.ndim == 3 and a.shape[2] == 4:
        return a
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])


def rgb(a: np.ndarray, background: int = 255) -> np.ndarray:
    """RGBA -> RGB over a plain background (what the model sees)."""
    if a.shape[2] == 3:
        return a
    alpha = a[..., 3:4].astype(np.float32) / 255.0
    if alpha.min() == 1.0:
        return np.ascontiguousarray(a[..., :3])
    out = a[..., :3].astype(np.float32) * alpha + background * (1.0 - alpha)
    return np.rint(out).astype(np.uint8)


def icon(a: np.ndarray, size: int) -> QIcon:
    """A thumbnail icon that looks the same selected or not (no selection tint over the picture)."""
    pm = pixmap(a, size)
    result = QIcon(pm)
    result.addPixmap(pm, QIcon.Mode.Selected)
    return result


def pixmap(a: np.ndarray, size: int | None = None) -> QPixmap:
    """A QPixmap, optionally scaled smoothly to fit a `size` square (thumbnails)."""
    pm = QPixmap.fromImage(to_qimage(a))
    if size is not None:
        pm = pm.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                       Qt.TransformationMode.SmoothTransformation)
    return pm
