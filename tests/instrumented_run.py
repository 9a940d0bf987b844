"""Run a training script as ``python <script>`` would, with test instrumentation patched in from
outside, so that the training loops carry no test hooks:

    python tests/instrumented_run.py [--nonfinite_steps 3,4] [--dump_rank_state_dir DIR] train_sspo_sd15.py ...

Works under ``accelerate launch`` too (each rank runs this file). It patches ``sspo_utils`` before
the script imports from it, then runs the script's ``__main__`` with ``runpy``.

--nonfinite_steps: the SSPO/DPO loss of those optimizer steps (1-based, as logged) is NaN, so
    that its gradients are NaN too: the non-finite guard must skip the step.
--dump_rank_state_dir: after a successful run, every rank writes its live trained weights and its
    RCR pool to DIR/rank<i>.safetensors, so that a test can check that DDP ranks agree.
"""

import argparse
import inspect
import json
import os
import runpy
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv):
    """This file's options come before the script (the first argument ending in .py); everything
    after the script is the script's own."""
    split = next((i for i, arg in enumerate(argv) if arg.endswith(".py")), len(argv))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nonfinite_steps", default="", help="Comma-separated optimizer steps whose loss is NaN.")
    parser.add_argument("--dump_rank_state_dir", default=None)
    parser.add_argument("script", help="The training script, then its arguments.")
    options = parser.parse_args(argv[:split + 1])
    options.script_args = argv[split + 1:]
    return options


class Instrumentation:
    """Follows the run through functions the trainers import from sspo_utils: the resumed step,
    the accelerator and the RCR pool (``resume_training_state``), and the current optimizer step
    (``optimizer_step_batches`` yields once per step)."""

    def __init__(self, nonfinite_steps):
        self.nonfinite_steps = nonfinite_steps
        self.step = 0  # the optimizer step being computed, 1-based once the loop runs
        self.reference_pool = None
        self.process_index, self.num_processes = 0, 1

    def install(self, sspo_utils):
        real_resume, real_step_batches = sspo_utils.resume_training_state, sspo_utils.optimizer_step_batches
        resume_signature = inspect.signature(real_resume)

        def resume_training_state(*args, **kwargs):
            bound = resume_signature.bind(*args, **kwargs)
            accelerator = bound.arguments["accelerator"]
            self.reference_pool = bound.arguments["reference_pool"]
            self.process_index, self.num_processes = accelerator.process_index, accelerator.num_processes
            result = real_resume(*args, **kwargs)
            self.step = result[0]  # global_step after resume
            return result

        def optimizer_step_batches(*args, **kwargs):
            for step_batches in real_step_batches(*args, **kwargs):
                self.step += 1
                yield step_batches

        sspo_utils.resume_training_state = resume_training_state
        sspo_utils.optimizer_step_batches = optimizer_step_batches
        for name in ("sspo_loss", "dpo_loss"):
            setattr(sspo_utils, name, self.poisoned(getattr(sspo_utils, name)))

    def poisoned(self, loss_function):
        def wrapper(*args, **kwargs):
            loss, info = loss_function(*args, **kwargs)
            if self.step in self.nonfinite_steps:
                loss = loss * float("nan")
            return loss, info

        return wrapper

    def dump_rank_state(self, directory):
        from safetensors.torch import save_file

        pool = self.reference_pool
        tensors = {f"live.{name}": p.detach().cpu().contiguous() for name, p in zip(pool.names, pool.params)}
        for i, snapshot in enumerate(pool.snapshots):
            tensors.update({f"snapshot.{i}.{name}": t.cpu().contiguous() for name, t in zip(pool.names, snapshot)})
        os.makedirs(directory, exist_ok=True)
        save_file(tensors, os.path.join(directory, f"rank{self.process_index}.safetensors"),
                  metadata={"steps": json.dumps(pool.steps), "num_processes": str(self.num_processes)})


def main():
    options = parse_args(sys.argv[1:])
    script = os.path.abspath(options.script)
    sys.path[0] = os.path.dirname(script)  # as `python <script>` sets it
    if REPO_ROOT not in sys.path:
        sys.path.insert(1, REPO_ROOT)
    import sspo_utils

    instrumentation = Instrumentation({int(step) for step in options.nonfinite_steps.split(",") if step})
    instrumentation.install(sspo_utils)
    sys.argv = [script, *options.script_args]
    runpy.run_path(script, run_name="__main__")  # a stopped run exits here (SystemExit): no dump
    if options.dump_rank_state_dir:
        instrumentation.dump_rank_state(options.dump_rank_state_dir)


if __name__ == "__main__":
    main()
