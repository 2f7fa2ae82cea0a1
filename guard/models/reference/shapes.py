"""Procedural "shapes" scenes: the reference generator's data.

A scene is a 64x64 RGB image with a smooth textured background and one or two flat-coloured
objects, each in its own quadrant. Every scene comes with a text prompt drawn from templates with
synonyms. Rendering is pure NumPy (float64, 4x supersampled coverage), so the same seed gives the
same image on any machine.

Example:
    >>> from guard.models.reference.shapes import sample_scene, render, prompt_for
    >>> scene = sample_scene(7)
    >>> img = render(scene)            # uint8 (64, 64, 3)
    >>> prompt_for(scene, seed=7)      # e.g. 'a big crimson disc in the upper left'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

DATA_VERSION = "shapes-v1"
IMAGE_SIZE = 64
SUPERSAMPLE = 4

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
SIZES: tuple[str, ...] = ("small", "large")

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 170, 55),
    "blue": (35, 75, 220),
    "yellow": (235, 205, 30),
    "purple": (145, 45, 185),
    "orange": (245, 135, 25),
}
# Muted background tones, far from the saturated object colours.
BACKGROUND_RGB: tuple[tuple[int, int, int], ...] = (
    (200, 190, 170), (120, 120, 125), (70, 80, 95), (95, 75, 60), (165, 175, 160), (175, 185, 200),
)
TEXTURES: tuple[str, ...] = ("gradient", "stripes", "waves", "blobs")

SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge", "three-sided shape"),
    "star": ("star", "pentagram", "five-pointed star"),
    "cross": ("cross", "plus", "plus sign"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "emerald", "lime"),
    "blue": ("blue", "azure", "cobalt"),
    "yellow": ("yellow", "golden", "lemon"),
    "purple": ("purple", "violet", "lilac"),
    "orange": ("orange", "amber", "tangerine"),
    "small": ("small", "tiny", "little"),
    "large": ("large", "big", "huge"),
    "top left": ("top left", "upper left"),
    "top right": ("top right", "upper right"),
    "bottom left": ("bottom left", "lower left"),
    "bottom right": ("bottom right", "lower right"),
}
PREPOSITIONS = ("in the", "at the")
CENTRES = {"top left": (16.0, 16.0), "top right": (48.0, 16.0),
           "bottom left": (16.0, 48.0), "bottom right": (48.0, 48.0)}
RADII = {"small": 7.5, "large": 12.0}


@dataclass(frozen=True)
class SceneObject:
    """One object: its shape, colour, size, quadrant, and small continuous jitters."""

    shape: str
    colour: str
    size: str
    position: str
    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0
    colour_jitter: tuple[int, int, int] = (0, 0, 0)


@dataclass(frozen=True)
class Scene:
    """A full scene: background parameters and one or two objects in distinct quadrants."""

    objects: tuple[SceneObject, ...]
    background: int = 0
    texture: str = "gradient"
    texture_params: tuple[float, ...] = field(default=(0.0, 0.0, 0.0, 0.0))


HELD_OUT: frozenset[tuple[str, str, str]] = frozenset({
    ("circle", "blue", "top left"), ("star", "orange", "top left"), ("cross", "yellow", "top left"),
    ("square", "purple", "top right"), ("triangle", "red", "top right"), ("diamond", "green", "top right"),
    ("circle", "yellow", "bottom left"), ("square", "orange", "bottom left"), ("star", "green", "bottom left"),
    ("triangle", "blue", "bottom right"), ("cross", "purple", "bottom right"), ("diamond", "red", "bottom right"),
})


def is_held_out(shape: str, colour: str, position: str) -> bool:
    """True for the (shape, colour, position) triples never shown to the generator in training.

    12 of the 144 triples, three per position; every shape and colour occurs twice among them and
    still occurs in training elsewhere.
    """
    return (shape, colour, position) in HELD_OUT


def _rng(seed: int, salt: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{DATA_VERSION}/{salt}/{int(seed)}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:8], "little")))


def sample_scene(seed: int, *, split: str = "train", n_objects: int | None = None) -> Scene:
    """Draw a scene from `seed`.

    Args:
        seed: any int; same seed and split give the same scene.
        split: "train" never contains held-out triples; "heldout" makes the first object a held-out
            triple; "any" draws freely.
        n_objects: force 1 or 2 objects (default: 1 with probability 0.6).
    """
    if split not in ("train", "heldout", "any"):
        raise ValueError(f"split must be 'train', 'heldout' or 'any', got {split!r}")
    rng = _rng(seed, "scene/" + split)
    n = n_objects if n_objects is not None else (1 if rng.random() < 0.6 else 2)
    if n not in (1, 2):
        raise ValueError(f"n_objects must be 1 or 2, got {n}")
    quadrants = list(rng.permutation(len(POSITIONS))[:n])
    objects = []
    for i, q in enumerate(quadrants):
        position = POSITIONS[q]
        want_held = split == "heldout" and i == 0
        while True:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = COLOURS[int(rng.integers(len(COLOURS)))]
            if split == "any" or is_held_out(shape, colour, position) == want_held:
                break
        objects.append(SceneObject(
            shape=shape, colour=colour, size=SIZES[int(rng.integers(2))], position=position,
            dx=float(rng.uniform(-2.5, 2.5)), dy=float(rng.uniform(-2.5, 2.5)),
            angle=float(rng.uniform(-0.2, 0.2)),
            colour_jitter=tuple(int(v) for v in rng.integers(-12, 13, size=3)),
        ))
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    params = (float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(14.0, 28.0)),
              float(rng.uniform(10.0, 22.0)), float(rng.uniform(0, 2 * np.pi)))
    return Scene(objects=tuple(objects), background=int(rng.integers(len(BACKGROUND_RGB))),
                 texture=texture, texture_params=params)


def _grid() -> tuple[np.ndarray, np.ndarray]:
    n = IMAGE_SIZE * SUPERSAMPLE
    c = (np.arange(n, dtype=np.float64) + 0.5) / SUPERSAMPLE
    return np.meshgrid(c, c)  # x (columns), y (rows)


_X, _Y = _grid()


def _polygon(xs: np.ndarray, ys: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon over a pixel grid (vectorised over pixels)."""
    inside = np.zeros(xs.shape, dtype=bool)
    x0, y0 = verts[:, 0], verts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1):
        if b == d:
            continue
        cond = (b > ys) != (d > ys)
        xcross = a + (ys - b) * (c - a) / (d - b)
        inside ^= cond & (xs < xcross)
    return inside


def _shape_mask(obj: SceneObject) -> np.ndarray:
    cx, cy = CENTRES[obj.position]
    cx, cy = cx + obj.dx, cy + obj.dy
    r = RADII[obj.size]
    # Rotate the sampling grid into the object's frame.
    ca, sa = np.cos(obj.angle), np.sin(obj.angle)
    u = (_X - cx) * ca + (_Y - cy) * sa
    v = -(_X - cx) * sa + (_Y - cy) * ca
    if obj.shape == "circle":
        return u * u + v * v <= r * r
    if obj.shape == "square":
        h = r * 0.82
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if obj.shape == "diamond":
        return np.abs(u) / (r * 0.8) + np.abs(v) / r <= 1.0
    if obj.shape == "cross":
        w = r * 0.34
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if obj.shape == "triangle":
        t = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
        verts = np.stack([r * np.cos(t), r * np.sin(t) + r * 0.15], axis=1)
        return _polygon(u, v, verts)
    if obj.shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r * 1.05, r * 0.45)
        verts = np.stack([rad * np.cos(t), rad * np.sin(t) + r * 0.05], axis=1)
        return _polygon(u, v, verts)
    raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def _background(scene: Scene) -> np.ndarray:
    n = IMAGE_SIZE
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    theta, period, amp, phase = scene.texture_params
    base = np.array(BACKGROUND_RGB[scene.background], dtype=np.float64)
    d = x * np.cos(theta) + y * np.sin(theta)
    if scene.texture == "gradient":
        t = (d - d.mean()) / n * 2.0 * amp
    elif scene.texture == "stripes":
        t = amp * np.tanh(2.0 * np.sin(2 * np.pi * d / period + phase))
    elif scene.texture == "waves":
        e = x * np.cos(theta + 1.3) + y * np.sin(theta + 1.3)
        t = amp * 0.6 * (np.sin(2 * np.pi * d / period + phase) + np.sin(2 * np.pi * e / (period * 1.4)))
    elif scene.texture == "blobs":
        t = amp * np.sin(2 * np.pi * x / period + phase) * np.sin(2 * np.pi * y / period + theta)
    else:
        raise ValueError(f"unknown texture {scene.texture!r}; expected one of {TEXTURES}")
    tint = np.array([1.0, 0.9, 0.8]) if scene.background % 2 == 0 else np.array([0.8, 0.9, 1.0])
    return base[None, None, :] + t[:, :, None] * tint[None, None, :]


def render(scene: Scene) -> np.ndarray:
    """Render a scene to uint8 RGB of shape (64, 64, 3)."""
    img = _background(scene)
    s = SUPERSAMPLE
    for obj in scene.objects:
        cov = _shape_mask(obj).astype(np.float64)
        cov = cov.reshape(IMAGE_SIZE, s, IMAGE_SIZE, s).mean(axis=(1, 3))[:, :, None]
        rgb = np.clip(np.array(COLOUR_RGB[obj.colour], dtype=np.float64) + np.array(obj.colour_jitter), 0, 255)
        img = img * (1.0 - cov) + rgb[None, None, :] * cov
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def describe(obj: SceneObject, rng: np.random.Generator) -> str:
    """One object's phrase, e.g. 'a tiny crimson disc in the upper left'."""
    words = [_pick(rng, SYNONYMS[obj.size]), _pick(rng, SYNONYMS[obj.colour]), _pick(rng, SYNONYMS[obj.shape]),
             _pick(rng, PREPOSITIONS), _pick(rng, SYNONYMS[obj.position])]
    return "a " + " ".join(words)


def prompt_for(scene: Scene, seed: int = 0) -> str:
    """A prompt naming every object of `scene`, synonyms drawn from `seed`."""
    rng = _rng(seed, "prompt")
    return " and ".join(describe(o, rng) for o in scene.objects)


def scene_labels(scene: Scene) -> np.ndarray:
    """Per-quadrant labels (4, 3): shape index + 1 (0 = empty), colour index, size index."""
    out = np.zeros((len(POSITIONS), 3), dtype=np.int64)
    for o in scene.objects:
        q = POSITIONS.index(o.position)
        out[q] = (SHAPES.index(o.shape) + 1, COLOURS.index(o.colour), SIZES.index(o.size))
    return out


def parse_prompt(prompt: str) -> list[tuple[str, str, str, str]]:
    """Invert `prompt_for`: [(shape, colour, size, position)] for each object phrase.

    Raises ValueError naming the phrase when a prompt is not in the reference vocabulary.
    """
    inverse = {}
    for canon, syns in SYNONYMS.items():
        for s in syns:
            inverse[s] = canon
    out = []
    for phrase in prompt.strip().split(" and "):
        words = phrase.split()
        if len(words) < 2 or words[0] != "a":
            raise ValueError(f"cannot parse prompt phrase {phrase!r}: expected 'a <size> <colour> <shape> in the <position>'")
        found: dict[str, str] = {}
        rest = " ".join(words[1:])
        for syn in sorted(inverse, key=len, reverse=True):
            if f" {syn} " in f" {rest} ":
                canon = inverse[syn]
                kind = ("shape" if canon in SHAPES else "colour" if canon in COLOURS
                        else "size" if canon in SIZES else "position")
                if kind not in found:
                    found[kind] = canon
                    rest = f" {rest} ".replace(f" {syn} ", " # ", 1).strip()
        missing = [k for k in ("shape", "colour", "position") if k not in found]
        if missing:
            raise ValueError(f"cannot parse prompt phrase {phrase!r}: no {', '.join(missing)} word found")
        out.append((found["shape"], found["colour"], found.get("size", "large"), found["position"]))
    return out
