# shapes_world.py's CLI with trail.py's renderer (a direction cue in every frame). usage: as shapes_world.py
import sys
sys.path.insert(0, 'experiments/results/2026-11-29/video-direction-probe')  # trail.py
import trail
trail.sw.render_video = trail.render_video_with_trail
trail.sw.main(trail.sw.parse_args())
