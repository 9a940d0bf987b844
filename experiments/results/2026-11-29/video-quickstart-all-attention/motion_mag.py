# Mean |displacement| (first to last frame where the shape is found) of every clip in evaluate_sspo output folders.
import sys, json, os, numpy as np
sys.path.insert(0, '.')
import evaluate_sspo as ev, shapes_world as sw
for d in sys.argv[1:]:
    rows = [json.loads(l) for l in open(os.path.join(d, 'manifest.jsonl'))]
    by = {}
    for r in rows:
        frames = ev.read_video_frames(os.path.join(d, r['path']))
        spec = sw.parse_caption(r['prompt'])
        st = [sw._static_scores(sw._as_array(f), spec, sw.SIZES[spec.size]) for f in frames]
        cs = [s['center'] for s in st if s['center'] is not None]
        m = float(np.hypot(*(np.array(cs[-1]) - np.array(cs[0])))) if len(cs) >= 2 else 0.0
        by.setdefault(r['model'], []).append(m)
    print(d, {k: round(float(np.mean(v)), 4) for k, v in by.items()})
