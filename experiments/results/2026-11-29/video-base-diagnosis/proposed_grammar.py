"""Does the image base read a video grammar built on the image grammar? Image captions with "moving <direction>"
inserted before "on a ... background", or appended after it, one image each, DDIM 20, CFG 5."""
import json
import sys

import numpy as np
import torch

sys.path.insert(0, ".")
import shapes_world as sw  # noqa: E402

torch.set_num_threads(1)
captions = [line.strip() for line in open("data/shapes-train-image-prompts.txt") if line.strip()][:16]
directions = list(sw.DIRECTIONS)
pipeline = sw.load_pipeline("models/shapes-sd15")
results = {}
for label, texts in (("image grammar", captions),
                     ("image grammar + 'moving <direction>'",
                      [c.replace(" on a ", f" moving {directions[i % 4]} on a ") for i, c in enumerate(captions)]),
                     ("image grammar + ', moving <direction>' at the end",
                      [f"{c}, moving {directions[i % 4]}" for i, c in enumerate(captions)])):
    outputs = sw.generate(pipeline, texts, list(range(16)), 20, 5)
    components = [sw.reward_components(o, c) for o, c in zip(outputs, captions)]
    results[label] = {k: round(float(np.mean([x[k] for x in components])), 3) for k in components[0]}
    results[label]["example"] = texts[0]
print(json.dumps(results, indent=1))
json.dump(results, open("proposed_grammar.json", "w"), indent=1)
