"""Procedurally drawn pedestrians for the synthetic re-id set.

An identity is a combination of discrete clothing attributes (colours from a
shared palette, patterns, sleeve and leg lengths, bag, hat, build); a camera
has its own colour cast, lighting, blur, noise and background style, and a
preferred walking direction; each picture adds pose and viewpoint jitter,
scale, position, background clutter, other pedestrians and occluders.

The point is a set that an untrained network cannot solve by colour matching
(the camera's cast and background dominate raw colour statistics, so images
cluster by camera) while a trained one can (identities are fully determined by
the attributes, which survive every nuisance). Everything is drawn with
pillow at twice the output size and downsampled, deterministically from numpy
generators seeded by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Clothing colours shared by all identities: similar hues on purpose, so that
# identities differ by combinations rather than by one unique colour.
CLOTHING_COLOURS = (
    (20, 20, 24), (235, 235, 230), (128, 128, 132), (185, 30, 35), (225, 110, 30), (230, 200, 40),
    (40, 140, 60), (30, 60, 150), (90, 170, 220), (120, 50, 140), (230, 130, 170), (110, 75, 45),
    (190, 170, 120), (20, 90, 90), (80, 100, 40), (60, 30, 30),
)
SKIN_TONES = ((240, 200, 170), (215, 165, 125), (170, 120, 85), (120, 80, 55), (80, 55, 40))
HAIR_COLOURS = ((25, 20, 18), (80, 50, 30), (150, 110, 60), (200, 170, 110), (140, 140, 140))
UPPER_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "dots", "split", "panel")
LOWER_KINDS = ("trousers", "shorts", "skirt")
BAGS = ("none", "none", "backpack", "shoulder", "handbag")
VIEWS = ("front", "back", "left", "right")

# Drawing happens at this multiple of the output size, then is downsampled.
_SUPERSAMPLE = 2

# How hard the set is. Camera colour gains are drawn in 1 +- CAST, then normalised.
CAST = 0.1
BYSTANDER_P = 0.15
CLUTTER = (0, 2)
OCCLUSION_P = 0.05
SCALE = (0.78, 0.97)


@dataclass(frozen=True)
class Identity:
    """What a person wears; fixed over all pictures of the identity."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    long_hair: bool
    hat: tuple[int, int, int] | None
    upper: tuple[int, int, int]
    upper_second: tuple[int, int, int]
    upper_pattern: str
    long_sleeves: bool
    lower: tuple[int, int, int]
    lower_kind: str
    shoes: tuple[int, int, int]
    bag: str
    bag_colour: tuple[int, int, int]
    build: float


@dataclass(frozen=True)
class Camera:
    """How a camera sees: colour cast, lighting, optics and its scene."""

    gains: tuple[float, float, float]
    offset: tuple[float, float, float]
    gamma: float
    blur: float
    noise: float
    wall: tuple[int, int, int]
    floor: tuple[int, int, int]
    horizon: float
    texture: str
    clutter_colours: tuple[tuple[int, int, int], ...]
    view_weights: tuple[float, float, float, float]


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.normal(0.0, amount), 0, 255)) for c in colour)


def random_identity(rng: np.random.Generator) -> Identity:
    upper = _pick(rng, CLOTHING_COLOURS)
    second = _pick(rng, [c for c in CLOTHING_COLOURS if c != upper])
    return Identity(
        skin=_pick(rng, SKIN_TONES),
        hair=_pick(rng, HAIR_COLOURS),
        long_hair=bool(rng.random() < 0.35),
        hat=_pick(rng, CLOTHING_COLOURS) if rng.random() < 0.2 else None,
        upper=upper,
        upper_second=second,
        upper_pattern=_pick(rng, UPPER_PATTERNS),
        long_sleeves=bool(rng.random() < 0.5),
        lower=_pick(rng, CLOTHING_COLOURS),
        lower_kind=_pick(rng, LOWER_KINDS),
        shoes=_pick(rng, CLOTHING_COLOURS[:4] + CLOTHING_COLOURS[11:13]),
        bag=_pick(rng, BAGS),
        bag_colour=_pick(rng, CLOTHING_COLOURS),
        build=float(rng.uniform(0.85, 1.2)),
    )


def random_camera(rng: np.random.Generator) -> Camera:
    gains = rng.uniform(1 - CAST, 1 + CAST, size=3)
    gains = gains / gains.mean() * rng.uniform(0.8, 1.1)
    views = rng.dirichlet(np.full(4, 0.6))
    return Camera(
        gains=tuple(float(g) for g in gains),
        offset=tuple(float(o) for o in rng.uniform(-55 * CAST, 55 * CAST, size=3)),
        gamma=float(rng.uniform(0.75, 1.3)),
        blur=float(rng.uniform(0.0, 0.9)),
        noise=float(rng.uniform(2.0, 9.0)),
        wall=tuple(int(c) for c in rng.integers(30, 230, size=3)),
        floor=tuple(int(c) for c in rng.integers(30, 200, size=3)),
        horizon=float(rng.uniform(0.35, 0.75)),
        texture=_pick(rng, ("bricks", "panels", "tiles", "gradient", "noise")),
        clutter_colours=tuple(tuple(int(c) for c in rng.integers(0, 256, size=3)) for _ in range(4)),
        view_weights=tuple(float(0.15 + v) for v in views / views.sum()),
    )


def render(identity: Identity, camera: Camera, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One picture [height, width] = `size` of `identity` seen by `camera`; all randomness from `rng`."""
    height, width = size
    big = (width * _SUPERSAMPLE, height * _SUPERSAMPLE)
    image = Image.new("RGB", big)
    _draw_background(image, camera, rng)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.binomial(2, BYSTANDER_P))):
        _draw_bystander(image, rng)
    weights = np.asarray(camera.view_weights)
    view = VIEWS[int(rng.choice(4, p=weights / weights.sum()))]
    _draw_person(image, draw, identity, view, rng, scale=float(rng.uniform(*SCALE)),
                 shift=float(rng.normal(0.0, 0.06)))
    if rng.random() < OCCLUSION_P:
        _draw_occluder(draw, big, rng)
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    return _apply_camera(image, camera, rng)


def render_fragment(identity: Identity, camera: Camera, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A bad detection: mostly background with part of a person, as Market-1501's distractors."""
    height, width = size
    image = render(identity, camera, rng, size)
    zoom = rng.uniform(1.6, 2.6)
    w, h = int(width / zoom), int(height / zoom)
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return image.crop((left, top, left + w, top + h)).resize((width, height), Image.Resampling.BILINEAR)


def render_background(camera: Camera, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Scene only (junk detections)."""
    height, width = size
    image = Image.new("RGB", (width * _SUPERSAMPLE, height * _SUPERSAMPLE))
    _draw_background(image, camera, rng)
    for _ in range(int(rng.integers(1, 3))):
        _draw_bystander(image, rng)
    return _apply_camera(image.resize((width, height), Image.Resampling.LANCZOS), camera, rng)


def _draw_background(image: Image.Image, camera: Camera, rng: np.random.Generator) -> None:
    width, height = image.size
    draw = ImageDraw.Draw(image)
    horizon = int(height * (camera.horizon + rng.normal(0.0, 0.04)))
    wall, floor = _jitter(rng, camera.wall, 12), _jitter(rng, camera.floor, 12)
    draw.rectangle([0, 0, width, horizon], fill=wall)
    draw.rectangle([0, horizon, width, height], fill=floor)
    shade = tuple(int(c * 0.75) for c in wall)
    phase = int(rng.integers(0, 40))
    if camera.texture == "bricks":
        for row, y in enumerate(range(-phase % 18, horizon, 18)):
            draw.line([0, y, width, y], fill=shade, width=2)
            for x in range((row % 2) * 20 - phase, width, 40):
                draw.line([x, y, x, y + 18], fill=shade, width=2)
    elif camera.texture == "panels":
        for x in range(-phase, width, 36):
            draw.rectangle([x, 0, x + 6, horizon], fill=shade)
    elif camera.texture == "tiles":
        floor_shade = tuple(int(c * 0.8) for c in floor)
        for y in range(horizon, height, 22):
            draw.line([0, y, width, y], fill=floor_shade, width=2)
        for x in range(-phase, width, 30):
            draw.line([x, horizon, x - 20, height], fill=floor_shade, width=2)
    elif camera.texture == "gradient":
        for y in range(0, horizon, 4):
            f = 0.6 + 0.4 * y / max(horizon, 1)
            draw.rectangle([0, y, width, y + 4], fill=tuple(int(c * f) for c in wall))
    for _ in range(int(rng.integers(CLUTTER[0], CLUTTER[1]))):
        colour = _jitter(rng, _pick(rng, camera.clutter_colours), 20)
        x0, y0 = rng.integers(-20, width), rng.integers(0, height)
        w, h = rng.integers(10, 60), rng.integers(10, 90)
        if rng.random() < 0.5:
            draw.rectangle([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
        else:
            draw.ellipse([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour)
    if camera.texture == "noise":
        noise = rng.normal(0.0, 14.0, size=(height, width, 1))
        pixels = np.asarray(image, dtype=np.float32) + noise
        image.paste(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))


def _draw_bystander(image: Image.Image, rng: np.random.Generator) -> None:
    """A smaller, partly visible pedestrian behind the subject."""
    width, height = image.size
    other = random_identity(rng)
    layer = Image.new("RGB", image.size)
    mask = Image.new("L", image.size)
    scale = rng.uniform(0.35, 0.6)
    side = -1 if rng.random() < 0.5 else 1
    _draw_person(layer, ImageDraw.Draw(layer), other, _pick(rng, VIEWS), rng, scale=scale,
                 shift=side * rng.uniform(0.35, 0.55), feet=rng.uniform(0.55, 0.85), mask=ImageDraw.Draw(mask))
    image.paste(layer, mask=mask)


def _draw_person(
    image: Image.Image,
    draw: ImageDraw.ImageDraw,
    who: Identity,
    view: str,
    rng: np.random.Generator,
    scale: float,
    shift: float,
    feet: float | None = None,
    mask: ImageDraw.ImageDraw | None = None,
) -> None:
    """Draw `who` seen from `view`, `scale` x the image height tall, centred at `shift` x width off the middle.

    With `mask`, every shape is also drawn in white on that mask (to paste the person elsewhere).
    """
    width, height = image.size
    tall = height * scale
    bottom = height * (feet if feet is not None else rng.uniform(0.97, 1.0))
    top = bottom - tall
    cx = width * (0.5 + shift)
    side = view in ("left", "right")
    facing = 1 if view == "right" else -1
    shoulder = tall * (0.13 if side else 0.2) * who.build
    hip = tall * (0.1 if side else 0.15) * who.build
    stride = rng.uniform(0.0, 0.09) * tall
    swing = rng.uniform(-1.0, 1.0)
    lean = rng.normal(0.0, 0.015) * tall

    def y(f: float) -> float:
        return top + f * tall

    def shape(kind: str, coords, fill, **kw) -> None:
        getattr(draw, kind)(coords, fill=fill, **kw)
        if mask is not None:
            getattr(mask, kind)(coords, fill=255, **kw)

    def jit(colour):
        return _jitter(rng, colour, 6)

    shoulder_y, waist_y, crotch_y, knee_y, ankle_y = y(0.19), y(0.5), y(0.56), y(0.76), y(0.95)
    torso = [(cx - shoulder + lean, shoulder_y), (cx + shoulder + lean, shoulder_y),
             (cx + hip, waist_y), (cx - hip, waist_y)]

    # Legs and shoes: front/back views spread the feet, side views scissor them.
    leg_w = tall * 0.055 * who.build
    feet_x = ([cx - hip * 0.55 - stride * 0.4, cx + hip * 0.55 + stride * 0.4] if not side
              else [cx - stride * swing, cx + stride * swing])
    for fx, hx in zip(feet_x, [cx - hip * 0.5, cx + hip * 0.5] if not side else [cx, cx]):
        leg_colour = who.lower if who.lower_kind == "trousers" else who.skin
        shape("line", [(hx, crotch_y), (fx, ankle_y)], jit(leg_colour), width=int(leg_w * 2))
        if who.lower_kind == "shorts":
            shape("line", [(hx, crotch_y - tall * 0.02), ((hx + fx) / 2, (crotch_y + knee_y) / 2 - tall * 0.04)],
                  jit(who.lower), width=int(leg_w * 2.3))
        toe = facing * tall * 0.04 if side else 0.0
        shape("ellipse", [fx - leg_w * 1.2 + min(toe, 0), ankle_y - tall * 0.015,
                          fx + leg_w * 1.2 + max(toe, 0), ankle_y + tall * 0.035], jit(who.shoes))
    # Hips and skirt.
    shape("rectangle", [cx - hip, waist_y - tall * 0.01, cx + hip, crotch_y + tall * 0.02], jit(who.lower))
    if who.lower_kind == "skirt":
        shape("polygon", [(cx - hip, waist_y), (cx + hip, waist_y), (cx + hip * 1.6, y(0.72)),
                          (cx - hip * 1.6, y(0.72))], jit(who.lower))

    # Backpack behind the torso when seen from the front or the side.
    pack = [cx - shoulder * 0.85 + lean, y(0.2), cx + shoulder * 0.85 + lean, y(0.47)]
    if who.bag == "backpack" and view != "back":
        if side:
            near, far = cx - facing * shoulder * 0.5, cx - facing * shoulder * 1.9
            shape("rounded_rectangle", [min(near, far), y(0.21), max(near, far), y(0.46)],
                  jit(who.bag_colour), radius=int(tall * 0.02))
    # Arms (behind the torso in side views: the far arm first).
    arm_w = int(tall * 0.045 * who.build)
    sleeve = who.upper if who.long_sleeves else who.skin
    for direction in (-1, 1):
        hand_dx = (direction * (shoulder + tall * 0.03) if not side
                   else facing * direction * swing * tall * 0.12)
        hand = (cx + hand_dx, y(0.5) + abs(hand_dx) * 0.1)
        root = (cx + (direction * shoulder * 0.9 if not side else 0.0) + lean, shoulder_y + tall * 0.02)
        elbow = ((root[0] + hand[0]) / 2, (root[1] + hand[1]) / 2)
        shape("line", [root, hand], jit(sleeve), width=arm_w)
        shape("line", [root, elbow], jit(who.upper), width=int(arm_w * 1.15))
        shape("ellipse", [hand[0] - arm_w * 0.6, hand[1] - arm_w * 0.6, hand[0] + arm_w * 0.6,
                          hand[1] + arm_w * 0.6], jit(who.skin))

    # Upper body with its pattern, pasted through a torso mask.
    _paint_torso(image, torso, who, rng)
    if mask is not None:
        mask.polygon(torso, fill=255)
    if who.bag == "backpack" and view == "back":
        shape("rounded_rectangle", pack, jit(who.bag_colour), radius=int(tall * 0.03))
    elif who.bag == "backpack" and view == "front":
        for direction in (-1, 1):
            x = cx + direction * shoulder * 0.55 + lean
            shape("line", [(x, shoulder_y), (x, y(0.36))], jit(who.bag_colour), width=max(2, arm_w // 3))
    elif who.bag == "shoulder":
        shape("line", [(cx - shoulder + lean, shoulder_y), (cx + hip * 1.1, y(0.48))], jit(who.bag_colour),
              width=max(2, arm_w // 3))
        shape("rectangle", [cx + hip * 0.7, y(0.44), cx + hip * 1.5, y(0.55)], jit(who.bag_colour))
    elif who.bag == "handbag":
        hx = cx + (shoulder + tall * 0.03) * (1 if not side else facing * 0.4)
        shape("rectangle", [hx - tall * 0.04, y(0.5), hx + tall * 0.04, y(0.6)], jit(who.bag_colour))

    # Head, hair, hat.
    head_r = tall * 0.065
    head_c = (cx + lean * 1.2 + (facing * tall * 0.01 if side else 0.0), y(0.1))
    shape("rectangle", [head_c[0] - head_r * 0.35, head_c[1], head_c[0] + head_r * 0.35, shoulder_y + 2],
          jit(who.skin))
    head_box = [head_c[0] - head_r, head_c[1] - head_r, head_c[0] + head_r, head_c[1] + head_r * 1.1]
    if view == "back":
        shape("ellipse", head_box, jit(who.hair))
    else:
        shape("ellipse", head_box, jit(who.skin))
        shape("chord", [head_box[0] - 1, head_box[1] - 2, head_box[2] + 1, head_box[3] - head_r * 0.4],
              jit(who.hair), start=180, end=360)
    if who.long_hair:
        shape("rectangle", [head_c[0] - head_r * (1.0 if view != "front" else 1.05), head_c[1],
                            head_c[0] + head_r * 1.0, head_c[1] + head_r * 2.3] if view == "back" else
              [head_c[0] - head_r * 1.05, head_c[1] - head_r * 0.2, head_c[0] - head_r * 0.7, head_c[1] + head_r * 2.0],
              jit(who.hair))
    if who.hat is not None:
        shape("chord", [head_box[0] - head_r * 0.1, head_box[1] - head_r * 0.25, head_box[2] + head_r * 0.1,
                        head_box[3] - head_r * 0.5], jit(who.hat), start=180, end=360)


def _paint_torso(image: Image.Image, torso, who: Identity, rng: np.random.Generator) -> None:
    xs = [p[0] for p in torso]
    ys = [p[1] for p in torso]
    left, top, right, bottom = int(min(xs)) - 1, int(min(ys)) - 1, int(max(xs)) + 2, int(max(ys)) + 2
    w, h = right - left, bottom - top
    if w <= 1 or h <= 1:
        return
    base, second = _jitter(rng, who.upper, 6), _jitter(rng, who.upper_second, 6)
    cloth = Image.new("RGB", (w, h), base)
    draw = ImageDraw.Draw(cloth)
    step = max(4, h // 6)
    if who.upper_pattern == "hstripes":
        for yy in range(0, h, step):
            draw.rectangle([0, yy, w, yy + step // 2], fill=second)
    elif who.upper_pattern == "vstripes":
        for xx in range(0, w, step):
            draw.rectangle([xx, 0, xx + step // 2, h], fill=second)
    elif who.upper_pattern == "checks":
        for yy in range(0, h, step):
            for xx in range((yy // step) % 2 * step, w, 2 * step):
                draw.rectangle([xx, yy, xx + step, yy + step], fill=second)
    elif who.upper_pattern == "dots":
        for yy in range(step // 2, h, step):
            for xx in range(step // 2, w, step):
                draw.ellipse([xx - step // 4, yy - step // 4, xx + step // 4, yy + step // 4], fill=second)
    elif who.upper_pattern == "split":
        draw.rectangle([0, h // 2, w, h], fill=second)
    elif who.upper_pattern == "panel":
        draw.rectangle([w // 3, h // 6, 2 * w // 3, h], fill=second)
    mask = Image.new("L", (w, h))
    ImageDraw.Draw(mask).polygon([(x - left, y - top) for x, y in torso], fill=255)
    image.paste(cloth, (left, top), mask)


def _draw_occluder(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: np.random.Generator) -> None:
    width, height = size
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    kind = rng.integers(3)
    if kind == 0:  # a car, bench or railing in front of the legs
        top = int(height * rng.uniform(0.62, 0.82))
        draw.rectangle([0, top, width, height], fill=colour)
    elif kind == 1:  # a pole or a doorframe at the side
        w = int(width * rng.uniform(0.12, 0.3))
        x = int(rng.choice([rng.integers(-w // 2, w // 2), rng.integers(width - w, width - w // 2)]))
        draw.rectangle([x, 0, x + w, height], fill=colour)
    else:  # someone's shoulder entering the frame
        r = int(width * rng.uniform(0.25, 0.45))
        x = -r // 2 if rng.random() < 0.5 else width - r // 2
        yc = int(height * rng.uniform(0.3, 0.8))
        draw.ellipse([x - r, yc - r, x + r, yc + 2 * r], fill=colour)


def _apply_camera(image: Image.Image, camera: Camera, rng: np.random.Generator) -> Image.Image:
    if camera.blur > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(camera.blur))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    height = pixels.shape[0]
    # Per-picture exposure and a vertical light gradient on top of the camera's cast.
    exposure = rng.uniform(0.8, 1.2)
    gradient = 1.0 + rng.uniform(-0.2, 0.2) * np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None, None]
    pixels = np.power(np.clip(pixels * exposure * gradient, 0.0, 1.0), camera.gamma)
    pixels = pixels * np.asarray(camera.gains, dtype=np.float32) * 255.0 + np.asarray(camera.offset, dtype=np.float32)
    pixels += rng.normal(0.0, camera.noise, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
