"""Image helpers: uint8 <-> model space [-1, 1], and grids as PNG (a volume shown as three orthogonal slices)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .io import atomic_path


def orthogonal_slices(volume: np.ndarray, centre: tuple[int, int, int] | None = None) -> np.ndarray:
    """uint8 [C, S, 3S]: the three orthogonal slices of ``volume`` [C, D, H, W] (RAS+) through ``centre`` (default:
    the middle) side by side, each padded to the largest side S: sagittal, coronal and axial, each turned by 90
    degrees as the 2D NIfTI source shows a slice (superior, or anterior for the axial one, up). This is how the
    report and every grid show a volume."""
    v = np.asarray(volume)
    centre = tuple(n // 2 for n in v.shape[1:]) if centre is None else centre
    side = max(v.shape[1:])
    planes = [np.rot90(p, axes=(1, 2)) for p in (v[:, centre[0]], v[:, :, centre[1]], v[:, :, :, centre[2]])]
    padded = [np.pad(p, ((0, 0), (0, side - p.shape[1]), (0, side - p.shape[2]))) for p in planes]
    return np.concatenate(padded, axis=2)


def as_pictures(images: np.ndarray) -> np.ndarray:
    """Images [N, C, H, W] as they are; volumes [N, C, D, H, W] as their three orthogonal mid-slices [N, C, S, 3S]."""
    images = np.asarray(images)
    return np.stack([orthogonal_slices(v) for v in images]) if images.ndim == 5 else images


def grid(images: np.ndarray, *, ncol: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 images [N, C, H, W] (or volumes [N, C, D, H, W], as :func:`as_pictures`) into one uint8 image
    [H', W'] (grey) or [H', W', 3]."""
    images = as_pictures(images)
    n, c, h, w = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    out = np.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), pad_value, dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[:, y:y + h, x:x + w] = images[k]
    return out[0] if c == 1 else out.transpose(1, 2, 0)


def save_grid(path: str | Path, images: np.ndarray, *, ncol: int | None = None, scale: int = 3) -> Path:
    """Write a PNG grid of uint8 images [N, C, H, W], enlarged ``scale`` times (nearest neighbour)."""
    tile = grid(images, ncol=ncol)
    img = Image.fromarray(tile)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def to_model_space(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images_uint8.astype(np.float32) / 127.5 - 1.0


def to_uint8(x) -> np.ndarray:
    """Model space [-1, 1] (tensor or array) -> uint8, clipped and rounded."""
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_uint8(image: np.ndarray, *, size: int, channels: int) -> np.ndarray:
    """One uint8 image [C, H, W] as a model trained on an export sees it: resized to ``size`` x ``size`` (PIL bicubic,
    the export's resize) and grey repeated to ``channels`` = 3. The export and the audit's partial diffusion of x_p
    both go through this function, so the model is given x_p exactly as it was trained on it."""
    c, h, w = image.shape
    if channels not in (c, 3):
        raise ValueError(f"cannot make {channels} channels of a {c}-channel image")
    if (h, w) != (size, size):
        image = np.stack([np.asarray(Image.fromarray(ch).resize((size, size), Image.BICUBIC)) for ch in image])
    return np.repeat(image, channels // c, axis=0) if channels != c else np.ascontiguousarray(image)


def from_model_pixels(x, shape: tuple[int, int, int]):
    """A model's pixels [B, C', S, S] (a tensor in [-1, 1]) back in the audit's image space ``shape`` = (C, H, W):
    area-averaged down to H x W, and the channels averaged when the model made RGB of grey images."""
    import torch.nn.functional as F

    c, h, w = shape
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="area")
    if x.shape[1] != c:
        x = x.mean(dim=1, keepdim=True)
    return x
