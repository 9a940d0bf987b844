import sys, csv, numpy as np
sys.path.insert(0, '.')
import evaluate_sspo as ev, shapes_world as sw
D = 'data/shapes-chronomagic'
rows = list(csv.DictReader(open(f'{D}/pairs.csv')))
W, L = [], []
for r in rows:
    if r['label_0'] == '0.5': continue
    for folder, acc in (('videos', W), ('losers', L)):
        fr = ev.read_video_frames(f'{D}/{folder}/{r["videoid"]}.mp4')
        acc.append(sw.video_reward_components(fr, r['caption']))
for k in W[0]:
    print(k, round(np.mean([w[k] for w in W]), 3), round(np.mean([l[k] for l in L]), 3))
