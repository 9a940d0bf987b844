"""Does the motion follow the direction word? For each dircheck.json (12 training image captions x 4 direction
words x the same 2 seeds, DDIM 10, CFG 5): the direction score of each clip for its own word, the same clip scored
for each of the words (what a caption-blind model gets), and the share of the displacement's variance that
changes with the word at a fixed seed (0 when the word does not matter).
usage: python dirstats.py */dircheck.json"""
import collections
import json
import sys

import numpy as np

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def score(displacement, unit, half_travel):
    return float(np.clip((displacement[0] * unit[0] + displacement[1] * unit[1]) / half_travel, 0, 1))


print("| run | clips | own word | any word (caption-blind) | variance share of the word |")
print("|---|---|---|---|---|")
for path in sys.argv[1:]:
    rows = [r for r in json.load(open(path)) if r["disp"]]
    half_travel = 0.2 if path.startswith(("vw5", "vw6")) else 0.1  # half of VIDEO_TRAVEL (0.4 in vw5 and vw6)
    own = np.mean([score(r["disp"], DIRECTIONS[r["prompt"].rsplit(" ", 1)[1]], half_travel) for r in rows])
    words = sorted({r["prompt"].rsplit(" ", 1)[1] for r in rows})  # vw16 used only left and right
    blind = np.mean([np.mean([score(r["disp"], DIRECTIONS[w], half_travel) for w in words]) for r in rows])
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["prompt"].rsplit(", moving", 1)[0], r["seed"])].append(r["disp"])
    within = np.mean([np.var(np.array(v), axis=0).sum() for v in groups.values() if len(v) == len(words)])
    total = np.var(np.array([r["disp"] for r in rows]), axis=0).sum()
    print(f"| {path.split('/')[0]} | {len(rows)} | {own:.3f} | {blind:.3f} | {within / total:.2f} |")
