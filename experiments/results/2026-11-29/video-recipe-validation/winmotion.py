import sys, csv, numpy as np
sys.path.insert(0, '.')
import evaluate_sspo as ev, shapes_world as sw
D = sys.argv[1]
rows = list(csv.DictReader(open(f'{D}/pairs.csv')))
def mag(fr, cap):
    spec = sw.parse_caption(cap)
    cs = [s['center'] for s in (sw._static_scores(sw._as_array(f), spec, sw.SIZES[spec.size]) for f in fr) if s['center'] is not None]
    return float(np.hypot(*(np.array(cs[-1]) - np.array(cs[0])))) if len(cs) >= 2 else 0.0
W, L = [], []
for r in rows:
    if r['label_0'] == '0.5': continue
    W.append(mag(ev.read_video_frames(f'{D}/videos/{r["videoid"]}.mp4'), r['caption']))
    L.append(mag(ev.read_video_frames(f'{D}/losers/{r["videoid"]}.mp4'), r['caption']))
print('winners', np.mean(W), 'losers', np.mean(L), len(W))
