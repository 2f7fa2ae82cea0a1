"""A small CNN that reads a scene: for each quadrant its shape (or empty), colour and size; and the background.

It measures prompt adherence of generated images and concept presence for erasure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, parse_background, parse_prompt


class SceneClassifier(nn.Module):
    """(B,3,64,64) in [0,1] -> per-quadrant logits shape (B,4,7), colour (B,4,6), size (B,4,2); background (B,9)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.features = nn.Sequential(block(3, w), nn.MaxPool2d(2), block(w, 2 * w), nn.MaxPool2d(2),
                                      block(2 * w, 4 * w), nn.MaxPool2d(2), block(4 * w, 4 * w))  # (B,4w,8,8)
        self.n_shape, self.n_colour, self.n_size = len(SHAPES) + 1, len(COLOURS), len(SIZES)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 128), nn.ReLU(),
                                  nn.Linear(128, self.n_shape + self.n_colour + self.n_size))
        self.n_background = len(BACKGROUNDS)
        self.background_head = nn.Sequential(nn.Linear(8 * w, 64), nn.ReLU(), nn.Linear(64, self.n_background))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.features(x * 2 - 1)  # (B,C,8,8)
        b, c = f.shape[:2]
        # Quadrants in POSITIONS order: top left, top right, bottom left, bottom right.
        q = f.view(b, c, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(b * 4, c, 4, 4)
        out = self.head(q).view(b, 4, -1)
        # Background: mean and max of the features over the whole image (objects cover at most part of it).
        g = self.background_head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))
        return (out[..., : self.n_shape], out[..., self.n_shape: self.n_shape + self.n_colour],
                out[..., -self.n_size:], g)

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """labels (B,4,4): shape+1 (0 empty), colour, size, background; colour/size only count where an object is."""
        s, c, z, g = self(x)
        present = labels[..., 0] > 0
        loss = F.cross_entropy(s.reshape(-1, self.n_shape), labels[..., 0].reshape(-1))
        loss = loss + F.cross_entropy(g, labels[:, 0, 3])
        if present.any():
            loss = loss + F.cross_entropy(c[present], labels[..., 1][present])
            loss = loss + F.cross_entropy(z[present], labels[..., 2][present])
        return loss

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B,4,4) predicted labels in the layout of `shapes.scene_labels` (background repeated per quadrant)."""
        s, c, z, g = self(x)
        return torch.stack([s.argmax(-1), c.argmax(-1), z.argmax(-1), g.argmax(-1)[:, None].expand(-1, 4)], -1)


@dataclass(frozen=True)
class Adherence:
    """Fraction of prompted objects whose shape / colour / both the classifier confirms, and of prompts
    naming a background whose background it confirms (nan when no prompt names one)."""

    shape: float
    colour: float
    both: float
    n_objects: int
    background: float = float("nan")
    n_backgrounds: int = 0


ADHERENCE_COUNTS = ("objects", "shape", "colour", "both", "backgrounds", "background")


def adherence_counts(classifier: SceneClassifier, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Judge each image against its prompt, per prompt: long tensors (len(prompts),) of prompted objects and of
    those whose shape / colour / both the classifier confirms, and of named backgrounds (0 or 1) and confirmed ones.
    Sums over any subset of prompts give that subset's `Adherence` (e.g. for a bootstrap over prompts)."""
    pred = torch.cat([classifier.predict(images[i:i + 256]) for i in range(0, len(images), 256)])
    out = {k: torch.zeros(len(prompts), dtype=torch.long) for k in ADHERENCE_COUNTS}
    for i, p in enumerate(prompts):
        background = parse_background(p)
        if background is not None:
            out["backgrounds"][i] = 1
            out["background"][i] = int(int(pred[i, 0, 3]) == BACKGROUNDS.index(background))
        for shape, colour, _size, pos in parse_prompt(p):
            q = POSITIONS.index(pos)
            s_ok = int(pred[i, q, 0]) == SHAPES.index(shape) + 1
            c_ok = int(pred[i, q, 1]) == COLOURS.index(colour)
            out["objects"][i] += 1
            out["shape"][i] += s_ok
            out["colour"][i] += c_ok
            out["both"][i] += s_ok and c_ok
    return out


def adherence_from_counts(counts: dict[str, torch.Tensor], index=slice(None)) -> Adherence:
    """The `Adherence` of the prompts at `index` (all by default) from `adherence_counts`."""
    c = {k: int(v[index].sum()) for k, v in counts.items()}
    n, n_g = c["objects"], c["backgrounds"]
    return Adherence(c["shape"] / n, c["colour"] / n, c["both"] / n, n, c["background"] / n_g if n_g else float("nan"), n_g)


def prompt_adherence(classifier: SceneClassifier, images: torch.Tensor, prompts: list[str]) -> tuple[Adherence, torch.Tensor]:
    """Judge each image against its prompt. Returns the summary and a per-image bool (all objects right)."""
    counts = adherence_counts(classifier, images, prompts)
    per_image = (counts["both"] == counts["objects"]) & (counts["background"] == counts["backgrounds"])
    return adherence_from_counts(counts), per_image
