# A direction cue in every frame: two fading ghosts of the shape trail behind it (0.1 and 0.2 of the
# image side back along the motion, 50% and 25% of the shape's colour over the background), the way a moving
# object's look tells where it is heading.
import sys, runpy
sys.path.insert(0, '.')
import numpy as np
from PIL import Image, ImageDraw
import shapes_world as sw

def render_video_with_trail(spec, num_frames=8, image_size=sw.IMAGE_SIZE, rng=None):
    dx, dy = sw.DIRECTIONS[spec.direction]
    jitter = (rng.uniform(-1, 1) / 32, rng.uniform(-1, 1) / 32) if rng else (0, 0)
    cx, cy = sw.POSITIONS[spec.position]
    fg, bg = np.array(sw.COLORS[spec.color], float), np.array(sw.COLORS[spec.background], float)
    frames = []
    for i in range(num_frames):
        progress = sw.VIDEO_TRAVEL * (i / max(1, num_frames - 1) - 0.5)
        image = Image.new("RGB", (image_size, image_size), sw.COLORS[spec.background])
        draw = ImageDraw.Draw(image)
        for back, alpha in ((0.2, 0.25), (0.1, 0.5), (0.0, 1.0)):
            centre = (cx + jitter[0] + dx * (progress - back), cy + jitter[1] + dy * (progress - back))
            fill = tuple(int(round(v)) for v in alpha * fg + (1 - alpha) * bg)
            sw._draw_shape(draw, spec.shape, sw._box(centre, sw.SIZES[spec.size], image_size), fill)
        frames.append(image)
    return frames

