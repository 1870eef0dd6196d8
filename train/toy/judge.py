"""Exact pixel analysis of shapes-world pictures, to grade generated images.

    judge(image)                          # [Detection(color='red', shape='circle', position='left', pixels=351, ...)]
    score_caption(image, 'a red circle on the left')  # {'color': True, 'shape': True, 'position': True}

Foreground = pixels whose brightest channel is over a threshold; each gets the palette colour nearest to its
chromaticity (the pixel scaled to full brightness, so dim, blurred edges keep their colour); connected components per
colour under `min_pixels` are noise; a component's shape comes from blur-robust statistics of its colour mass (see
`shape_features`), its position is the anchor nearest to its bounding box's centre.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import permutations

import numpy as np
from PIL import Image

from .world import COLORS, POSITIONS, Scene, parse_caption

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_COLOR_NAMES = list(COLORS)
_ANCHORS = np.array(list(POSITIONS.values()), dtype=np.float32)
_POSITION_NAMES = list(POSITIONS)


@dataclass(frozen=True)
class Detection:
    """One shape found in a picture; `box` is the inclusive (x0, y0, x1, y1) of its pixels."""

    color: str
    shape: str
    position: str
    pixels: int
    box: tuple[int, int, int, int]
    fill: float  # see `shape_features`
    skew: float

    @property
    def attributes(self) -> tuple[str, str, str]:
        return (self.color, self.shape, self.position)


def _to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) float in 0-255 from a PIL image, a uint8 array or a float array in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    array = image.astype(np.float32)
    if image.dtype.kind == "f" and array.max() <= 1.0 + 1e-6:
        array = array * 255.0
    return array


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, each as an (N, 2) array of (y, x)."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        out.append(np.array(pixels))
    return out


def _soft_mask(array: np.ndarray, foreground: np.ndarray, nearest: np.ndarray, index: int, pixels: np.ndarray, pad=3):
    """How much of the palette colour each pixel around a component holds, relative to the component's typical
    brightness (so ~1 inside a shape, dim or not, and 0 on black); pixels of other colours are zeroed and negative
    values kept, so that noise stays zero-mean."""
    (y0, x0), (y1, x1) = pixels.min(0), pixels.max(0)
    height, width = foreground.shape
    ys = slice(max(y0 - pad, 0), min(y1 + pad, height - 1) + 1)
    xs = slice(max(x0 - pad, 0), min(x1 + pad, width - 1) + 1)
    color = _PALETTE[index]
    amount = array @ color / (color @ color)
    level = max(float(np.percentile(amount[pixels[:, 0], pixels[:, 1]], 75)), 1e-3)
    soft = np.clip(amount[ys, xs] / level, -1.0, 1.5)
    return np.where(foreground[ys, xs] & (nearest[ys, xs] != index), 0.0, soft)


def shape_features(soft: np.ndarray) -> tuple[float, float]:
    """(fill, skew) of a soft mask.

    fill: mass over the area of the half-maximum extent (square 1.0, circle 0.785, triangle ~0.5-0.8). Blur keeps
    the mass and, for straight edges, the half-maximum extent, so squares stay near 1.
    skew: skewness of the mass per row (0 for shapes symmetric top to bottom, -0.57 for an apex-up triangle). The
    third cumulant is additive under convolution and zero for a Gaussian, so blur only dilutes it through the variance.
    """
    mass = float(soft.sum())
    if mass <= 0:
        return 0.0, 0.0
    padded = np.pad(soft, 1)  # 3x3 mean: the extent should not follow single noisy pixels
    smooth = sum(padded[i : i + soft.shape[0], j : j + soft.shape[1]] for i in range(3) for j in range(3)) / 9
    cols, rows = np.nonzero(smooth.max(0) > 0.5)[0], np.nonzero(smooth.max(1) > 0.5)[0]
    if not len(cols) or not len(rows):
        return 0.0, 0.0
    fill = mass / ((cols[-1] - cols[0] + 1) * (rows[-1] - rows[0] + 1))
    profile, y = soft.sum(1), np.arange(soft.shape[0], dtype=np.float64)
    mean = (profile * y).sum() / mass
    variance = (profile * (y - mean) ** 2).sum() / mass
    skew = (profile * (y - mean) ** 3).sum() / mass / max(variance, 1e-6) ** 1.5
    return float(fill), float(skew)


def classify_shape(fill: float, skew: float) -> str:
    """Triangles by their bottom-heavy mass, then squares by filling their extent."""
    if skew < TRIANGLE_SKEW:
        return "triangle"
    return "square" if fill > SQUARE_FILL else "circle"


TRIANGLE_SKEW = -0.2  # triangles -0.3..-0.7 even blurred; circles and squares within +-0.2 even noisy
SQUARE_FILL = 0.885  # squares 0.84..1.04, circles 0.73..0.83 (up to 0.9 when heavily blurred)


def judge(image: Image.Image | np.ndarray, threshold: float = 96.0, min_pixels: int = 30) -> list[Detection]:
    """The shapes in a picture, largest first. `threshold` is on the brightest channel (0-255)."""
    array = _to_array(image)
    brightness = array.max(axis=-1)
    foreground = brightness > threshold
    chroma = array / np.maximum(brightness, 1.0)[..., None] * 255.0
    nearest = ((chroma[..., None, :] - _PALETTE) ** 2).sum(-1).argmin(-1)
    detections = []
    for index, name in enumerate(_COLOR_NAMES):
        for pixels in _components(foreground & (nearest == index)):
            if len(pixels) < min_pixels:
                continue
            (y0, x0), (y1, x1) = pixels.min(0), pixels.max(0)
            box = (int(x0), int(y0), int(x1), int(y1))
            fill, skew = shape_features(_soft_mask(array, foreground, nearest, index, pixels))
            centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2], dtype=np.float32)
            position = _POSITION_NAMES[int(((_ANCHORS - centre) ** 2).sum(-1).argmin())]
            detections.append(Detection(name, classify_shape(fill, skew), position, len(pixels), box, fill, skew))
    return sorted(detections, key=lambda d: -d.pixels)


def score_scene(image: Image.Image | np.ndarray, scene: Scene) -> dict[str, bool]:
    """Whether the picture shows each of the scene's shapes with the right colour, shape and position.

    Each described shape is paired with a distinct detection (the pairing that agrees on the most attributes); an
    attribute is right when it is right for every described shape. Extra detections are not penalised; a described
    shape with no detection left to pair makes every attribute wrong."""
    wanted = scene.attributes
    found = [d.attributes for d in judge(image)[:8]]  # the largest: noise specks never win a pairing anyway
    if not wanted or len(found) < len(wanted):
        return {"color": False, "shape": False, "position": False}
    best = max(
        permutations(found, len(wanted)),
        key=lambda pick: sum(a == b for w, f in zip(wanted, pick) for a, b in zip(w, f)),
    )
    return {
        name: all(w[i] == f[i] for w, f in zip(wanted, best)) for i, name in enumerate(("color", "shape", "position"))
    }


def score_caption(image: Image.Image | np.ndarray, caption: str) -> dict[str, bool]:
    """`score_scene` against the shapes the caption describes (see `world.parse_caption`)."""
    return score_scene(image, parse_caption(caption))


__all__ = ["Detection", "classify_shape", "judge", "score_caption", "score_scene", "shape_features"]
