"""The glyph world's colours: glyphs coloured by hue (:func:`colour_glyphs`; the hue per perceived gender
is :func:`biasloop.data.world.gender_colours`), and the oracle that reads the gender back from an
image's hue (:func:`oracle_labels`). Hues are fractions of the colour circle in [0, 1).

The tone attribute (:mod:`biasloop.data.tones`) is the colour's brightness (HSV value, in [0, 1]):
:func:`with_value` sets it, :func:`image_values` and :func:`oracle_tones` read it back."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1], output (n, 3)."""
    h6 = (hue % 1.0) * 6.0
    sector = np.floor(h6).astype(int) % 6
    frac = h6 - np.floor(h6)
    p = value * (1 - saturation)
    q = value * (1 - saturation * frac)
    t = value * (1 - saturation * (1 - frac))
    table = np.stack(
        [
            np.stack([value, t, p], 1),
            np.stack([q, value, p], 1),
            np.stack([p, value, t], 1),
            np.stack([p, q, value], 1),
            np.stack([t, p, value], 1),
            np.stack([value, p, q], 1),
        ],
        1,
    )
    return table[np.arange(len(hue)), sector]


def with_value(rgb: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Colours ``(n, 3)`` brought to brightness ``value`` (n,), HSV value in [0, 1], hue and saturation kept
    (an RGB colour's HSV value is its largest channel, and scaling the channels keeps hue and saturation)."""
    top = rgb.max(axis=1)
    if np.any(top <= 0):
        raise ValueError("with_value: a black colour has no hue to keep")
    return rgb * (np.asarray(value, dtype=float) / top)[:, None]


def colour_glyphs(glyphs: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Tint grey glyphs ``(n, h, w)`` in [0, 1] with colours ``(n, 3)``; returns uint8 ``(n, h, w, 3)``."""
    return np.clip(np.rint(glyphs[..., None] * rgb[:, None, None, :] * 255.0), 0, 255).astype(np.uint8)


def _circular_distance(hue: np.ndarray, centre: float) -> np.ndarray:
    """Distance on the hue circle (hues in [0, 1)), in [0, 1/2]."""
    difference = np.abs((np.asarray(hue, float) - centre) % 1.0)
    return np.minimum(difference, 1.0 - difference)


def image_hues(images: np.ndarray, min_chroma: float = 0.15, min_pixels: int = 3) -> np.ndarray:
    """The hue of each image's coloured pixels: their chroma-weighted circular mean hue.

    A glyph pixel is the glyph's grey level times one colour, so all of an image's glyph pixels share
    one hue; the weighting by chroma (``max(r, g, b) - min(r, g, b)``) lets the bright, saturated pixels
    decide it and keeps the noisy hue of dim or grey pixels out.

    Args:
        images: ``uint8`` ``(n, h, w, 3)`` RGB images (or floats in [0, 1]).
        min_chroma: a pixel counts as coloured when its chroma is at least this (fraction of full scale).
        min_pixels: fewer coloured pixels than this and the image has no hue (nan).

    Returns:
        ``(n,)`` hues in [0, 1), nan for an image without enough coloured pixels (a grey scene, a
        blank image).
    """
    rgb, coloured = _coloured_pixels(images, min_chroma, "image_hues")
    top, bottom = rgb.max(axis=2), rgb.min(axis=2)
    chroma = top - bottom
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    # the hexagonal HSV hue, in sixths of the circle
    sector = np.where(top == r, ((g - b) / safe) % 6.0, np.where(top == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    angle = 2.0 * np.pi * sector / 6.0
    weight = np.where(coloured, chroma, 0.0)
    x, y = (weight * np.cos(angle)).sum(axis=1), (weight * np.sin(angle)).sum(axis=1)
    hue = (np.arctan2(y, x) / (2.0 * np.pi)) % 1.0
    enough = coloured.sum(axis=1) >= min_pixels
    return np.where(enough, hue, np.nan)


def oracle_labels(
    images: np.ndarray, hue_female: float, hue_male: float, min_chroma: float = 0.15, min_pixels: int = 3
) -> np.ndarray:
    """Perceived gender read off the hue, as the glyph world codes it: the ground-truth labeller.

    An image's hue (:func:`image_hues`) is ``female`` when it lies within a quarter of the female-male
    hue distance of ``hue_female`` (closer to it than to the midpoint the world gives its ambiguous
    samples), ``male`` likewise, and ``abstain`` otherwise: an ambiguous sample (hue near the midpoint),
    a hue far from both, or an image with too few coloured pixels (the grey scenes without a person).
    With the default world (hues 0.93 and 0.57, jitter 0.03) the bands are +-0.09 around each hue.

    Args:
        images: ``uint8`` ``(n, h, w, 3)`` RGB images.
        hue_female, hue_male: the world's ``world.hue_female`` and ``world.hue_male`` (HSV hues in [0, 1)).
        min_chroma, min_pixels: what counts as a coloured pixel and how many an image needs
            (:func:`image_hues`).

    Returns:
        ``(n,)`` object array of ``"female"``, ``"male"`` or ``"abstain"``.
    """
    separation = float(_circular_distance(np.array(hue_female), hue_male))
    if separation <= 0:
        raise ValueError(f"oracle_labels: hue_female and hue_male must differ, got {hue_female} and {hue_male}")
    band = separation / 4.0
    hue = image_hues(images, min_chroma, min_pixels)
    known = ~np.isnan(hue)
    filled = np.where(known, hue, 0.0)
    labels = np.full(len(hue), "abstain", dtype=object)
    labels[known & (_circular_distance(filled, hue_female) < band)] = "female"
    labels[known & (_circular_distance(filled, hue_male) < band)] = "male"
    return labels


def _coloured_pixels(images: np.ndarray, min_chroma: float, caller: str) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb (n, pixels, 3) in [0, 1], coloured (n, pixels) bool)``: chroma at least ``min_chroma``."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{caller}: expected (n, h, w, 3) RGB images, got shape {images.shape}")
    rgb = images.reshape(len(images), -1, 3).astype(np.float64)
    if images.dtype == np.uint8:
        rgb /= 255.0
    return rgb, rgb.max(axis=2) - rgb.min(axis=2) >= min_chroma


def image_values(images: np.ndarray, min_chroma: float = 0.15, min_pixels: int = 3) -> np.ndarray:
    """The brightness of each image's colour: the HSV value (largest channel) of its brightest coloured
    pixel, in [0, 1].

    The glyph world scales a glyph so that its brightest pixel is 1 before tinting it (tone on), so this
    pixel carries the colour's own brightness, whatever the glyph's grey levels.

    Args:
        images: ``uint8`` ``(n, h, w, 3)`` RGB images (or floats in [0, 1]).
        min_chroma, min_pixels: what counts as a coloured pixel and how many an image needs, as in
            :func:`image_hues`.

    Returns:
        ``(n,)`` brightness, nan for an image without enough coloured pixels (a grey scene, a blank image).
    """
    rgb, coloured = _coloured_pixels(images, min_chroma, "image_values")
    value = np.where(coloured, rgb.max(axis=2), 0.0).max(axis=1, initial=0.0)
    return np.where(coloured.sum(axis=1) >= min_pixels, value, np.nan)


def oracle_tones(
    images: np.ndarray, values: Mapping[str, float], min_chroma: float = 0.15, min_pixels: int = 3
) -> np.ndarray:
    """Tone read off the brightness, as the glyph world codes it: the tone's ground-truth labeller.

    An image's brightness (:func:`image_values`) gets the class whose brightness is nearest on a log scale
    (brightness is a ratio: a glyph is its colour times a grey level), when it lies within half the log
    distance from that class to its nearest other class; otherwise, and for an image with too few
    coloured pixels (a grey scene), ``abstain``. With the default world (0.92, 0.63, 0.40, jitter +-8%)
    the bands are [0.76, 1.11], [0.52, 0.76] and [0.32, 0.50], and every drawn brightness lies inside
    its band.

    Args:
        images: ``uint8`` ``(n, h, w, 3)`` RGB images.
        values: class -> its brightness (``world.tone.values``), at least two classes, distinct, in (0, 1].

    Returns:
        ``(n,)`` object array of the classes of ``values`` or ``"abstain"``.
    """
    names = list(values)
    centres = np.log(np.array([values[name] for name in names], dtype=float))
    if len(names) < 2 or not np.all(np.isfinite(centres)) or len(set(centres.tolist())) < len(names):
        raise ValueError(f"oracle_tones: expected two or more distinct brightness values in (0, 1], got {dict(values)}")
    gaps = np.abs(centres[:, None] - centres[None, :]) + np.diag(np.full(len(names), np.inf))
    half_width = gaps.min(axis=1) / 2.0
    value = image_values(images, min_chroma, min_pixels)
    known = ~np.isnan(value) & (value > 0)
    distance = np.abs(np.log(np.where(known, value, 1.0))[:, None] - centres[None, :])
    nearest = distance.argmin(axis=1)
    inside = known & (distance[np.arange(len(value)), nearest] < half_width[nearest])
    labels = np.full(len(value), "abstain", dtype=object)
    labels[inside] = np.asarray(names, dtype=object)[nearest[inside]]
    return labels
