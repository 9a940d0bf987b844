"""The README's image or video quickstart block with a different training seed (evaluation unchanged: the same
held-out prompts and seeds), in a scratch folder; copies the report here as <marker>-seed<N>/.

    python experiments/results/2026-11-29/quickstart-seeds/run_seed.py quickstart 1 /tmp/qs-seed1 [RESULTS_DIR]
"""
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests"))
from test_quickstart import readme_block  # noqa: E402

marker, seed, scratch = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lines = readme_block(marker).strip().splitlines()
lines = [line for line in lines if "pip install" not in line]
script = "\n".join(lines)
assert script.count("--seed 0 ") == 1, "expected exactly one training --seed 0"
script = script.replace("--seed 0 ", f"--seed {seed} ")
os.makedirs(scratch, exist_ok=True)
for name in ("train_sspo_sd15.py", "train_sspo_animatediff.py", "sspo_utils.py", "sspo_tiny.py", "shapes_world.py",
             "evaluate_sspo.py", "models", "data", "experiments", ".venv"):
    if not os.path.exists(os.path.join(scratch, name)):
        os.symlink(os.path.join(REPO, name), os.path.join(scratch, name))
start = time.time()
result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=scratch, capture_output=True, text=True,
                        env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
print("rc", result.returncode, "seconds", round(time.time() - start))
if result.returncode:
    sys.exit(result.stderr[-3000:])
eval_dir = "sspo-shapes-eval" if marker == "quickstart" else "sspo-shapes-video-eval"
out = os.path.join(sys.argv[4] if len(sys.argv) > 4 else HERE, f"{marker}-seed{seed}")
os.makedirs(out, exist_ok=True)
for name in ("report.md", "report.json"):
    shutil.copy(os.path.join(scratch, eval_dir, name), out)
