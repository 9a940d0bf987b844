# Validation split carved from the TRAINING captions (held-out captions untouched): 64 decided captions
# are removed from the preference data; the recipe is chosen on them.
import random, os, pandas as pd
d = pd.read_parquet('data/shapes-pickapic/data/train-00000-of-00001.parquet')
decided = sorted(d[d.label_0 != 0.5].caption)
val = sorted(random.Random(11).sample(decided, 64))
os.makedirs('trainsplit/data', exist_ok=True)
d[~d.caption.isin(val)].to_parquet('trainsplit/data/train-00000-of-00001.parquet')
open('val64-prompts.txt', 'w').write('\n'.join(val) + '\n')
print(len(d[~d.caption.isin(val)]), (d[~d.caption.isin(val)].label_0 != 0.5).sum())
