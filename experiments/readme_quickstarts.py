# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""Run the README's quickstart blocks as written and keep what they printed, for the README's numbers.

Each block (``<!-- quickstart -->``, ``<!-- quickstart-video -->``, ``<!-- quickstart-sdxl -->``) runs in a scratch
folder that links the repository's scripts, models and data, with this interpreter's venv as ``.venv``, minus
the ``pip install`` line (that venv has the requirements). Training seed 0 is the block itself; another seed
changes only the trainer's ``--seed``. Kept per run, under ``--output_dir/<block>-seed<N>/``: ``command.sh``, the
evaluation's ``report.{md,json}``, ``scores.jsonl.gz``, the trainer's model card and ``timing.json`` (wall and CPU
seconds).

    python experiments/readme_quickstarts.py --blocks quickstart quickstart-video quickstart-sdxl \\
        --seeds 0 --output_dir experiments/results/<date>-quickstarts
"""

import argparse
import contextlib
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINKED = ("train_sspo_sd15.py", "train_sspo_sdxl.py", "train_sspo_animatediff.py", "sspo_utils.py", "sspo_tiny.py",
          "shapes_world.py", "evaluate_sspo.py", "models", "data", "experiments")


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", nargs="+", default=["quickstart"],
                        choices=["quickstart", "quickstart-video", "quickstart-sdxl"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Training seeds; 0 is the block as written.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--keep_scratch", default=None,
                        help="Run in this folder and keep it (images included, e.g. for experiments/reward_grid.py); "
                             "default: a temporary folder.")
    return parser.parse_args(input_args)


def readme_command(marker: str, seed: int) -> str:
    readme = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    found = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)```", readme, re.S)
    if not found:
        raise SystemExit(f"error: README.md has no bash block after <!-- {marker} -->")
    command = found.group(1)
    if seed != 0:
        command, count = re.subn(r"--seed 0\b", f"--seed {seed}", command, count=1)
        if count != 1:
            raise SystemExit(f"error: the {marker} block has no '--seed 0' to change")
    return command


def link_repository(scratch: str):
    """Make ``scratch`` look like the repository to a README block, with this interpreter's venv as ``.venv``."""
    for name, target in [(name, os.path.join(REPO_ROOT, name)) for name in LINKED] + [(".venv", sys.prefix)]:
        if not os.path.lexists(os.path.join(scratch, name)):
            os.symlink(target, os.path.join(scratch, name))


def run_block(command: str, scratch: str) -> dict:
    """Runs the block minus its install line (the linked venv has the requirements already)."""
    command = "\n".join(line for line in command.splitlines() if "pip install" not in line)
    link_repository(scratch)
    began = time.time()
    with open(os.path.join(scratch, "output.log"), "w") as log:
        process = subprocess.Popen(["bash", "-euo", "pipefail", "-c", command], cwd=scratch, stdout=log,
                                   stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1",
                                                                      HF_DATASETS_OFFLINE="1"))
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        with open(os.path.join(scratch, "output.log"), encoding="utf-8", errors="replace") as log:
            raise RuntimeError("the block failed; the end of its output:\n" + log.read()[-3000:])
    return {"wall_seconds": round(time.time() - began, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1)}


def keep_outputs(command: str, scratch: str, timing: dict, out: str):
    """The evaluation folder is the block's ``--output_dir`` that holds a report; the trainer's is the other."""
    folders = re.findall(r"--output_dir (\S+)", command)
    (eval_dir,) = [f for f in folders if os.path.isfile(os.path.join(scratch, f, "report.json"))]
    (train_dir,) = [f for f in folders if f != eval_dir]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "command.sh"), "w") as f:
        f.write(command)
    for name in ("report.md", "report.json"):
        shutil.copy(os.path.join(scratch, eval_dir, name), os.path.join(out, name))
    scores = os.path.join(scratch, eval_dir, "scores.jsonl")
    with open(scores, "rb") as src, gzip.open(os.path.join(out, "scores.jsonl.gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(os.path.join(scratch, train_dir, "README.md"), os.path.join(out, "model_card.md"))
    with open(os.path.join(out, "timing.json"), "w") as f:
        json.dump({**timing, "machine": f"{os.cpu_count()} CPU cores"}, f, indent=2)


def main(args):
    for marker in args.blocks:
        for seed in args.seeds:
            out = os.path.join(args.output_dir, f"{marker}-seed{seed}")
            if os.path.isfile(os.path.join(out, "report.json")):
                print(f"{out}: done already", flush=True)
                continue
            command = readme_command(marker, seed)
            if args.keep_scratch:
                kept = os.path.join(args.keep_scratch, f"{marker}-seed{seed}")
                os.makedirs(kept)
                scratch_dir = contextlib.nullcontext(kept)
            else:
                scratch_dir = tempfile.TemporaryDirectory()
            with scratch_dir as scratch:
                timing = run_block(command, scratch)
                keep_outputs(command, scratch, timing, out)
            print(f"{out}: {timing}", flush=True)


if __name__ == "__main__":
    main(parse_args())
