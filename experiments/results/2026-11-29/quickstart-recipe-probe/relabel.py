import sys, os, pandas as pd
src, out, margin = sys.argv[1], sys.argv[2], float(sys.argv[3])
df = pd.read_parquet(src + "/data/train-00000-of-00001.parquet")
d = df.reward_0 - df.reward_1
df["label_0"] = [0.5 if abs(x) < margin else (1.0 if x > 0 else 0.0) for x in d]
df["label_1"] = 1 - df["label_0"]
os.makedirs(out + "/data", exist_ok=True); df.to_parquet(out + "/data/train-00000-of-00001.parquet")
w = [max(a, b) for a, b, l in zip(df.reward_0, df.reward_1, df.label_0) if l != 0.5]
print(len(w), sum(w)/len(w))
