"""The reference generator's world (v2): textured scenes with text prompts.

A scene is a 64x64 RGB image: a procedural natural background (one of `BACKGROUNDS`: clouds, grass,
gravel, wood, marble, water, bricks, fabric, foliage) with a random palette, a lighting gradient and
mild sensor noise, and 1-3 shaded, textured objects (shape x colour x size), one per quadrant, which
may overlap their neighbours. Every region carries texture, so a 16x16 token map of a scene uses many
distinct codes, as a natural photo does (v1's flat scenes used ~25 of 256; see DESIGN §8).

Every scene comes with a prompt from templates with synonyms naming its objects and its background,
e.g. "a big crimson disc in the upper left and a tiny cobalt star at the lower right on marble".
Rendering is pure NumPy (float64), so the same seed gives the same image on any machine.

Example:
    >>> from guard.models.reference.shapes import sample_scene, render, prompt_for
    >>> scene = sample_scene(7)
    >>> img = render(scene)            # uint8 (64, 64, 3)
    >>> prompt_for(scene, seed=7)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

DATA_VERSION = "shapes-v2"
IMAGE_SIZE = 64
SUPERSAMPLE = 4

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: tuple[str, ...] = ("clouds", "grass", "gravel", "wood", "marble", "water", "bricks", "fabric",
                                "foliage")

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 170, 55),
    "blue": (35, 75, 220),
    "yellow": (235, 205, 30),
    "purple": (145, 45, 185),
    "orange": (245, 135, 25),
}

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
    "clouds": ("clouds", "a cloudy sky", "mist"),
    "grass": ("grass", "a lawn", "a meadow"),
    "gravel": ("gravel", "pebbles", "sand"),
    "wood": ("wood", "timber", "a wooden table"),
    "marble": ("marble", "stone", "a marble slab"),
    "water": ("water", "a pond", "ripples"),
    "bricks": ("bricks", "a brick wall", "tiles"),
    "fabric": ("fabric", "cloth", "a woven rug"),
    "foliage": ("foliage", "leaves", "a hedge"),
}
PREPOSITIONS = ("in the", "at the")
BACKGROUND_PREPOSITION = "on"
CENTRES = {"top left": (16.0, 16.0), "top right": (48.0, 16.0),
           "bottom left": (16.0, 48.0), "bottom right": (48.0, 48.0)}
RADII = {"small": 7.5, "large": 12.5}
JITTER = 3.0  # centre jitter (pixels) per axis; large objects near the middle overlap their neighbours
N_OBJECTS_P = (0.45, 0.35, 0.20)  # probability of 1, 2, 3 objects


@dataclass(frozen=True)
class SceneObject:
    """One object: shape, colour, size, quadrant, small continuous jitters, shading and texture seeds."""

    shape: str
    colour: str
    size: str
    position: str
    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0
    colour_jitter: tuple[int, int, int] = (0, 0, 0)
    light: float = 0.0      # direction of the light on the object (radians)
    texture_seed: int = 0


@dataclass(frozen=True)
class Scene:
    """A full scene: a background (class and its own seed) and 1-3 objects in distinct quadrants.

    Objects are drawn in order; a later object covers an earlier one where they overlap.
    """

    objects: tuple[SceneObject, ...]
    background: str = "clouds"
    background_seed: int = 0


HELD_OUT: frozenset[tuple[str, str, str]] = frozenset({
    ("circle", "blue", "top left"), ("star", "orange", "top left"), ("cross", "yellow", "top left"),
    ("square", "purple", "top right"), ("triangle", "red", "top right"), ("diamond", "green", "top right"),
    ("circle", "yellow", "bottom left"), ("square", "orange", "bottom left"), ("star", "green", "bottom left"),
    ("triangle", "blue", "bottom right"), ("cross", "purple", "bottom right"), ("diamond", "red", "bottom right"),
})
# (shape, background) pairs never shown to the generator in training: one per background.
HELD_OUT_BACKGROUND: frozenset[tuple[str, str]] = frozenset({
    ("circle", "bricks"), ("square", "water"), ("triangle", "grass"), ("star", "wood"), ("cross", "marble"),
    ("diamond", "clouds"), ("circle", "fabric"), ("star", "gravel"), ("square", "foliage"),
})


def is_held_out(shape: str, colour: str, position: str) -> bool:
    """True for the (shape, colour, position) triples never shown to the generator in training.

    12 of the 144 triples, three per position; every shape and colour occurs twice among them and
    still occurs in training elsewhere.
    """
    return (shape, colour, position) in HELD_OUT


def is_held_out_background(shape: str, background: str) -> bool:
    """True for the (shape, background) pairs never shown to the generator in training (9 of 54)."""
    return (shape, background) in HELD_OUT_BACKGROUND


def _rng(seed: int, salt: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{DATA_VERSION}/{salt}/{int(seed)}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:8], "little")))


def _held(shape: str, colour: str, position: str, background: str) -> bool:
    return is_held_out(shape, colour, position) or is_held_out_background(shape, background)


def sample_scene(seed: int, *, split: str = "train", n_objects: int | None = None) -> Scene:
    """Draw a scene from `seed`.

    Args:
        seed: any int; same seed and split give the same scene.
        split: "train" never contains a held-out (shape, colour, position) triple or (shape, background)
            pair; "heldout" makes the first object a held-out triple or pair (half each); "any" draws freely.
        n_objects: force 1, 2 or 3 objects (default: 1, 2, 3 with probabilities 0.45, 0.35, 0.20).
    """
    if split not in ("train", "heldout", "any"):
        raise ValueError(f"split must be 'train', 'heldout' or 'any', got {split!r}")
    rng = _rng(seed, "scene/" + split)
    n = n_objects if n_objects is not None else int(rng.choice(3, p=N_OBJECTS_P)) + 1
    if n not in (1, 2, 3):
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n}")
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    held_kind = "triple" if rng.random() < 0.5 else "pair"
    quadrants = list(rng.permutation(len(POSITIONS))[:n])
    objects = []
    for i, q in enumerate(quadrants):
        position = POSITIONS[q]
        while True:
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = COLOURS[int(rng.integers(len(COLOURS)))]
            if split == "any":
                break
            if split == "heldout" and i == 0:
                ok = (is_held_out(shape, colour, position) if held_kind == "triple"
                      else is_held_out_background(shape, background) and not is_held_out(shape, colour, position))
            else:
                ok = not _held(shape, colour, position, background)
            if ok:
                break
        objects.append(SceneObject(
            shape=shape, colour=colour, size=SIZES[int(rng.integers(2))], position=position,
            dx=float(rng.uniform(-JITTER, JITTER)), dy=float(rng.uniform(-JITTER, JITTER)),
            angle=float(rng.uniform(-0.3, 0.3)),
            colour_jitter=tuple(int(v) for v in rng.integers(-15, 16, size=3)),
            light=float(rng.uniform(0, 2 * np.pi)), texture_seed=int(rng.integers(2 ** 31)),
        ))
    return Scene(objects=tuple(objects), background=background, background_seed=int(rng.integers(2 ** 31)))


# ------------------------------------------------------------------------------------------ geometry
def _grid() -> tuple[np.ndarray, np.ndarray]:
    n = IMAGE_SIZE * SUPERSAMPLE
    c = (np.arange(n, dtype=np.float64) + 0.5) / SUPERSAMPLE
    return np.meshgrid(c, c)  # x (columns), y (rows)


_X, _Y = _grid()
_PY, _PX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64) + 0.5  # pixel centres


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


def _shape_mask(obj: SceneObject, ox: float = 0.0, oy: float = 0.0) -> np.ndarray:
    """Supersampled boolean mask of `obj` (moved by (ox, oy) pixels, for its shadow)."""
    cx, cy = CENTRES[obj.position]
    cx, cy = cx + obj.dx + ox, cy + obj.dy + oy
    r = RADII[obj.size]
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


def _coverage(mask: np.ndarray) -> np.ndarray:
    s = SUPERSAMPLE
    return mask.astype(np.float64).reshape(IMAGE_SIZE, s, IMAGE_SIZE, s).mean(axis=(1, 3))


# ------------------------------------------------------------------------------------------ textures
def _upsample(grid: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Smooth (smoothstep-bilinear) upsampling of a (g, g, ...) lattice to (size, size, ...)."""
    g = grid.shape[0]
    t = (np.arange(size, dtype=np.float64) + 0.5) / size * (g - 1)
    i0 = np.minimum(t.astype(np.int64), g - 2)
    f = t - i0
    f = f * f * (3 - 2 * f)
    extra = (1,) * (grid.ndim - 2)
    fr, fc = f.reshape(-1, 1, *extra), f.reshape(1, -1, *extra)
    rows = grid[i0] * (1 - fr[:, :1]) + grid[i0 + 1] * fr[:, :1]
    cols = rows[:, i0] * (1 - fc) + rows[:, i0 + 1] * fc
    return cols


def fractal_noise(rng: np.random.Generator, *, base: int = 2, octaves: int = 5, persistence: float = 0.55,
                  channels: int = 1) -> np.ndarray:
    """Value noise summed over octaves (lattices base+1, 2*base+1, ...), (64, 64, channels), ~zero mean, unit-ish std."""
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE, channels))
    amp, total = 1.0, 0.0
    for o in range(octaves):
        g = min(base * 2 ** o, IMAGE_SIZE) + 1
        out += amp * _upsample(rng.standard_normal((g, g, channels)))
        total += amp * amp
        amp *= persistence
    return out / np.sqrt(total)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One RGB colour in [0, 255] from hue (turns), saturation and value in [0, 1]."""
    i = int(h * 6) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return 255.0 * np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _palette(rng: np.random.Generator, hue: tuple[float, float], sat: tuple[float, float],
             val: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Two related colours (dark, light) drawn from hue/saturation/value ranges."""
    h = rng.uniform(*hue) % 1.0
    s = rng.uniform(*sat)
    v = rng.uniform(*val)
    dark = _hsv(h, s, v * rng.uniform(0.55, 0.75))
    light = _hsv((h + rng.uniform(-0.04, 0.04)) % 1.0, s * rng.uniform(0.6, 1.0), min(1.0, v * rng.uniform(1.0, 1.2)))
    return dark, light


def _mix(dark: np.ndarray, light: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)[..., None] if t.ndim == 2 else np.clip(t, 0.0, 1.0)
    return dark * (1 - t) + light * t


def _bg_clouds(rng):
    dark, light = _palette(rng, (0.0, 1.0), (0.05, 0.45), (0.55, 0.9))
    n = fractal_noise(rng, base=2, octaves=6, persistence=0.62)[..., 0]
    col = fractal_noise(rng, base=4, octaves=4, persistence=0.6, channels=3) * 10
    return _mix(dark, light, 0.5 + 0.3 * n) + col


def _bg_grass(rng):
    dark, light = _palette(rng, (0.17, 0.33), (0.35, 0.7), (0.35, 0.7))
    # Blades: noise lattices much finer across (x) than along (y), sheared per scene.
    t = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    shear = rng.uniform(-0.4, 0.4)
    for gx, gy, a in ((32, 5, 1.0), (64, 9, 0.7), (16, 3, 0.5)):
        lat = rng.standard_normal((gy + 1, gx + 1))
        ys = _PY / IMAGE_SIZE * gy
        xs = ((_PX + shear * _PY) / IMAGE_SIZE * gx) % gx
        y0, x0 = np.minimum(ys.astype(int), gy - 1), xs.astype(int)
        fy, fx = ys - y0, xs - x0
        t += a * ((lat[y0, x0] * (1 - fx) + lat[y0, x0 + 1] * fx) * (1 - fy)
                  + (lat[y0 + 1, x0] * (1 - fx) + lat[y0 + 1, x0 + 1] * fx) * fy)
    col = fractal_noise(rng, base=4, octaves=3, channels=3) * 8
    return _mix(dark, light, 0.5 + 0.25 * t) + col


def _bg_gravel(rng):
    dark, light = _palette(rng, (0.05, 0.14), (0.1, 0.4), (0.5, 0.85))
    k = int(rng.integers(60, 110))
    pts = rng.uniform(0, IMAGE_SIZE, size=(k, 2))
    tint = rng.uniform(0.15, 0.95, size=k)
    hue_shift = rng.normal(0, 12, size=(k, 3))
    d = (_PX[..., None] - pts[:, 0]) ** 2 + (_PY[..., None] - pts[:, 1]) ** 2
    order = np.argsort(d, axis=-1)
    near = order[..., 0]
    d1 = np.take_along_axis(d, order[..., :2], -1)
    edge = np.clip((np.sqrt(d1[..., 1]) - np.sqrt(d1[..., 0])) / 1.5, 0, 1)
    img = _mix(dark, light, tint[near]) + hue_shift[near]
    img = img * (0.6 + 0.4 * edge)[..., None]
    return img + rng.normal(0, 9, size=(IMAGE_SIZE, IMAGE_SIZE, 1))


def _bg_wood(rng):
    dark, light = _palette(rng, (0.04, 0.11), (0.4, 0.75), (0.45, 0.85))
    cx, cy = rng.uniform(-80, 140, size=2)
    warp = fractal_noise(rng, base=2, octaves=4)[..., 0] * rng.uniform(2, 5)
    r = np.sqrt((_PX - cx) ** 2 + ((_PY - cy) * rng.uniform(0.15, 0.4)) ** 2) + warp
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * r / rng.uniform(3.0, 6.0))
    grain = fractal_noise(rng, base=16, octaves=2)[..., 0]
    return _mix(dark, light, 0.25 + 0.55 * rings ** 1.5 + 0.12 * grain)


def _bg_marble(rng):
    dark, light = _palette(rng, (0.0, 1.0), (0.0, 0.25), (0.65, 0.95))
    vein = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.5))
    th = rng.uniform(0, np.pi)
    turb = fractal_noise(rng, base=2, octaves=6, persistence=0.6)[..., 0]
    s = np.sin((_PX * np.cos(th) + _PY * np.sin(th)) / rng.uniform(5, 10) + 4.0 * turb)
    veins = np.abs(s) ** 0.35
    base = _mix(dark, light, 0.6 + 0.3 * fractal_noise(rng, base=8, octaves=3)[..., 0])
    return base * veins[..., None] + vein * (1 - veins[..., None])


def _bg_water(rng):
    dark, light = _palette(rng, (0.45, 0.65), (0.35, 0.8), (0.35, 0.75))
    t = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    for _ in range(5):
        th = rng.uniform(0, 2 * np.pi)
        t += np.sin((_PX * np.cos(th) + _PY * np.sin(th)) * 2 * np.pi / rng.uniform(5, 14) + rng.uniform(0, 6.3))
    t += 2.0 * fractal_noise(rng, base=4, octaves=3)[..., 0]
    caustic = np.clip(np.abs(t) < 0.35, 0, 1) * 0.5
    return _mix(dark, light, 0.45 + 0.12 * t + caustic)


def _bg_bricks(rng):
    dark, light = _palette(rng, (-0.03, 0.09), (0.3, 0.7), (0.4, 0.75))
    mortar = _hsv(rng.uniform(0, 0.15), rng.uniform(0, 0.2), rng.uniform(0.6, 0.9))
    bh = rng.uniform(5.0, 9.0)
    bw = bh * rng.uniform(1.6, 2.6)
    oy, ox = rng.uniform(0, bh), rng.uniform(0, bw)
    row = np.floor((_PY + oy) / bh)
    xs = _PX + ox + (row % 2) * bw / 2
    col = np.floor(xs / bw)
    fy, fx = ((_PY + oy) / bh) % 1.0, (xs / bw) % 1.0
    ids = (row * 131 + col * 17).astype(np.int64) % 997
    tint = rng.uniform(0.1, 0.9, size=997)[ids]
    line = (np.minimum(fy, 1 - fy) * bh < 0.7) | (np.minimum(fx, 1 - fx) * bw < 0.7)
    img = _mix(dark, light, tint + 0.12 * fractal_noise(rng, base=16, octaves=2)[..., 0])
    return np.where(line[..., None], mortar + rng.normal(0, 6, size=(IMAGE_SIZE, IMAGE_SIZE, 3)), img)


def _bg_fabric(rng):
    warp_c, weft_c = _palette(rng, (0.0, 1.0), (0.2, 0.7), (0.45, 0.85))
    p = rng.uniform(2.5, 4.5)
    th = rng.uniform(-0.3, 0.3)
    u = _PX * np.cos(th) + _PY * np.sin(th)
    v = -_PX * np.sin(th) + _PY * np.cos(th)
    over = (np.floor(u / p) + np.floor(v / p)) % 2 == 0
    thread = np.where(over, np.sin(np.pi * (v / p % 1.0)), np.sin(np.pi * (u / p % 1.0)))
    img = np.where(over[..., None], warp_c, weft_c) * (0.65 + 0.35 * thread)[..., None]
    stripes = np.sin(2 * np.pi * u / rng.uniform(12, 30)) > rng.uniform(0.3, 0.9)
    return img * np.where(stripes, rng.uniform(0.6, 0.85), 1.0)[..., None] + rng.normal(0, 5, size=(IMAGE_SIZE, IMAGE_SIZE, 3))


def _bg_foliage(rng):
    dark, light = _palette(rng, (0.2, 0.42), (0.4, 0.8), (0.25, 0.6))
    img = _mix(dark * 0.6, dark, 0.5 + 0.3 * fractal_noise(rng, base=4, octaves=3)[..., 0])
    for _ in range(int(rng.integers(45, 80))):
        cx, cy = rng.uniform(-4, IMAGE_SIZE + 4, size=2)
        a, b = rng.uniform(2.0, 4.5), rng.uniform(1.0, 2.2)
        th = rng.uniform(0, np.pi)
        u = (_PX - cx) * np.cos(th) + (_PY - cy) * np.sin(th)
        v = -(_PX - cx) * np.sin(th) + (_PY - cy) * np.cos(th)
        leaf = (u / a) ** 2 + (v / b) ** 2
        m = np.clip((1.0 - leaf) * 3, 0, 1)[..., None]
        shade = _mix(dark, light, np.array(rng.uniform(0.2, 1.0))) * (0.8 + 0.2 * np.clip(u / a, -1, 1))[..., None]
        img = img * (1 - m) + shade * m
    return img


_BACKGROUND_FN = {"clouds": _bg_clouds, "grass": _bg_grass, "gravel": _bg_gravel, "wood": _bg_wood,
                  "marble": _bg_marble, "water": _bg_water, "bricks": _bg_bricks, "fabric": _bg_fabric,
                  "foliage": _bg_foliage}


def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    if scene.background not in _BACKGROUND_FN:
        raise ValueError(f"unknown background {scene.background!r}; expected one of {BACKGROUNDS}")
    img = _BACKGROUND_FN[scene.background](rng)
    # Muted: keep the saturated object colours distinct from any background.
    grey = img.mean(-1, keepdims=True)
    return grey + (img - grey) * 0.8


def _object_pixels(obj: SceneObject) -> np.ndarray:
    """The object's surface: its colour, shaded towards its light and textured (64, 64, 3)."""
    rng = np.random.Generator(np.random.PCG64(obj.texture_seed))
    rgb = np.clip(np.array(COLOUR_RGB[obj.colour], dtype=np.float64) + np.array(obj.colour_jitter), 0, 255)
    cx, cy = CENTRES[obj.position]
    cx, cy = cx + obj.dx, cy + obj.dy
    r = RADII[obj.size]
    along = ((_PX - cx) * np.cos(obj.light) + (_PY - cy) * np.sin(obj.light)) / r
    shade = 1.0 + 0.22 * np.clip(along, -1.3, 1.3)
    tex = fractal_noise(rng, base=8, octaves=3, persistence=0.7)[..., 0]
    kind = int(rng.integers(3))
    if kind == 1:  # stripes
        th = rng.uniform(0, np.pi)
        tex = tex * 0.5 + np.sin((_PX * np.cos(th) + _PY * np.sin(th)) * 2 * np.pi / rng.uniform(3, 6))
    elif kind == 2:  # dots
        p = rng.uniform(3.5, 6)
        tex = tex * 0.5 + 1.5 * (((_PX % p) - p / 2) ** 2 + ((_PY % p) - p / 2) ** 2 < (p / 4) ** 2) - 0.5
    img = rgb * (shade * (1.0 + 0.09 * tex))[..., None]
    return img + rng.normal(0, 4, size=(IMAGE_SIZE, IMAGE_SIZE, 3))


def render(scene: Scene) -> np.ndarray:
    """Render a scene to uint8 RGB of shape (64, 64, 3)."""
    rng = np.random.Generator(np.random.PCG64(scene.background_seed))
    img = _background(scene, rng)
    for obj in scene.objects:
        shadow = _coverage(_shape_mask(obj, 1.5, 1.5))
        img = img * (1.0 - 0.35 * shadow)[..., None]
        cov = _coverage(_shape_mask(obj))[..., None]
        img = img * (1.0 - cov) + _object_pixels(obj) * cov
    # Lighting gradient over the whole scene, then sensor noise.
    th = rng.uniform(0, 2 * np.pi)
    ramp = ((_PX - 32) * np.cos(th) + (_PY - 32) * np.sin(th)) / 45.0
    img = img * (1.0 + rng.uniform(0.05, 0.2) * ramp)[..., None]
    img = img + rng.normal(0, rng.uniform(1.0, 3.0), size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- prompts
def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def describe(obj: SceneObject, rng: np.random.Generator) -> str:
    """One object's phrase, e.g. 'a tiny crimson disc in the upper left'."""
    words = [_pick(rng, SYNONYMS[obj.size]), _pick(rng, SYNONYMS[obj.colour]), _pick(rng, SYNONYMS[obj.shape]),
             _pick(rng, PREPOSITIONS), _pick(rng, SYNONYMS[obj.position])]
    return "a " + " ".join(words)


def prompt_for(scene: Scene, seed: int = 0) -> str:
    """A prompt naming every object of `scene` and its background, synonyms drawn from `seed`."""
    rng = _rng(seed, "prompt")
    objects = " and ".join(describe(o, rng) for o in scene.objects)
    return f"{objects} {BACKGROUND_PREPOSITION} {_pick(rng, SYNONYMS[scene.background])}"


def scene_labels(scene: Scene) -> np.ndarray:
    """Per-quadrant labels (4, 4): shape index + 1 (0 = empty), colour index, size index, background index.

    The background index is the same in every row (the scene's background class).
    """
    out = np.zeros((len(POSITIONS), 4), dtype=np.int64)
    out[:, 3] = BACKGROUNDS.index(scene.background)
    for o in scene.objects:
        q = POSITIONS.index(o.position)
        out[q, :3] = (SHAPES.index(o.shape) + 1, COLOURS.index(o.colour), SIZES.index(o.size))
    return out


def _inverse_synonyms(kinds: tuple[str, ...]) -> dict[str, str]:
    return {s: canon for canon, syns in SYNONYMS.items() if canon in kinds for s in syns}


def split_background(prompt: str) -> tuple[str, str | None]:
    """Split a prompt into (object phrases, background class or None when it names none)."""
    text = " ".join(prompt.strip().split())
    inverse = _inverse_synonyms(BACKGROUNDS)
    for syn in sorted(inverse, key=len, reverse=True):
        suffix = f" {BACKGROUND_PREPOSITION} {syn}"
        if text.endswith(suffix):
            return text[: -len(suffix)], inverse[syn]
    return text, None


def parse_background(prompt: str) -> str | None:
    """The background class a prompt names ('... on a lawn' -> 'grass'), or None."""
    return split_background(prompt)[1]


def parse_prompt(prompt: str) -> list[tuple[str, str, str, str]]:
    """Invert `prompt_for`'s object phrases: [(shape, colour, size, position)] for each object.

    The background phrase, if any, is ignored (see `parse_background`). Raises ValueError naming the
    phrase when a prompt is not in the reference vocabulary.
    """
    objects, _ = split_background(prompt)
    inverse = _inverse_synonyms(SHAPES + COLOURS + SIZES + POSITIONS)
    out = []
    for phrase in objects.split(" and "):
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
