# The perfect-render probe dataset: for each training caption a clean render (winner) and a render of a
# one-attribute mismatch (loser). usage: make_sets.py OUTPUT_DIR (run with the repo at .)
import sys, os, io, random, json
sys.path.insert(0, ".")
import numpy as np, datasets
import shapes_world as sw
out = sys.argv[1]
train, _ = sw.image_split()
rows = {k: [] for k in ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "has_label", "are_different")}
rng = random.Random(0)
for s in train:
    a = sw.render(s, rng=rng); b = sw.render(sw.mismatch(s, rng), rng=rng)
    rows["caption"].append(s.caption); rows["jpg_0"].append(sw._jpeg(a)); rows["jpg_1"].append(sw._jpeg(b))
    rows["label_0"].append(1.0); rows["label_1"].append(0.0); rows["has_label"].append(True); rows["are_different"].append(True)
os.makedirs(out + "/data", exist_ok=True)
datasets.Dataset.from_dict(rows).to_parquet(out + "/data/train-00000-of-00001.parquet")
print(np.mean([sw.reward(sw.render(s), s.caption) for s in train[:50]]))
