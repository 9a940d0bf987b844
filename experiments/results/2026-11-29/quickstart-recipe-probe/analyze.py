import sys, io
sys.path.insert(0, "/work/main")
import numpy as np, pandas as pd
from PIL import Image
import shapes_world as sw
df = pd.read_parquet(sys.argv[1] + "/data/train-00000-of-00001.parquet")
comps = {k: [] for k in ("color", "background", "shape", "size", "position")}
diff = []
for _, r in df.iterrows():
    c0 = sw.reward_components(Image.open(io.BytesIO(r.jpg_0)), r.caption)
    c1 = sw.reward_components(Image.open(io.BytesIO(r.jpg_1)), r.caption)
    for k in comps: comps[k].append((c0[k], c1[k]))
    diff.append(abs(np.mean(list(c0.values())) - np.mean(list(c1.values()))))
for k, v in comps.items():
    v = np.array(v); print(k, "mean %.3f  mean|diff| %.3f" % (v.mean(), np.abs(v[:,0]-v[:,1]).mean()))
diff = np.array(diff); print("reward |diff| quantiles", np.quantile(diff, [.25,.5,.75,.9]).round(3))
