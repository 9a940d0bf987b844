# toy.py with trail.py's renderer (a direction cue in every frame). usage: toy_trail.py OUT TRAVEL STEPS
import sys, runpy
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')
import trail
trail.sw.render_video = trail.render_video_with_trail
sys.argv = ['toy.py'] + sys.argv[1:]
runpy.run_path('experiments/results/2026-11-29/video-direction-probe/toy.py', run_name='__main__')
