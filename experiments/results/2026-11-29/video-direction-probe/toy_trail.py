# toy.py with trail.py's renderer (a direction cue in every frame). usage: toy_trail.py OUT TRAVEL STEPS
import sys, runpy
sys.path.insert(0, '/work/p8')
import trail
trail.sw.render_video = trail.render_video_with_trail
sys.argv = ['toy.py'] + sys.argv[1:]
runpy.run_path('/work/p8/toy.py', run_name='__main__')
