"""Bad input across the trainers (SD1.5, AnimateDiff, SDXL), table-driven: every case must stop within seconds with one
last stderr line ``error: ...`` that names the problem and says how to fix it, with no Python
traceback and without writing a LoRA or a weighted checkpoint. Plus: the --hub_token never
reaches disk or the logs, and static checks on unsafe loading (trust_remote_code, torch.load).
The shapes world's commands (shapes_world.py) meet the same standard: exit status 2, one
``error: ...`` line, and nothing written.

Each case is a plain ``python <script> ...`` subprocess (no accelerate launch, to stay fast).
All of the module's subprocesses (the cases, the shared rank-8 run the resume case starts
from, the token run, --help) are started together by the ``background`` fixture,
``SSPO_BAD_INPUT_JOBS`` (default 2) at a time, and each test waits for its own; the wall-time
guard measures the subprocess alone, not the time it waited for a free slot.
"""

import ast
import dataclasses
import glob
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Tuple

import pytest

import sspo_tiny


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"sd": os.path.join(REPO_ROOT, "train_sspo_sd15.py"), "ad": os.path.join(REPO_ROOT, "train_sspo_animatediff.py"),
           "xl": os.path.join(REPO_ROOT, "train_sspo_sdxl.py")}
MAX_CASE_SECONDS = 90  # a loose guard: bad input must fail early, not after minutes of training
SUBPROCESS_TIMEOUT = 300
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt")
FAKE_TOKEN = "hf_FAKE_TOKEN_sspo_test_123"


def script_env(**extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_python(script, args, env=None, timeout=SUBPROCESS_TIMEOUT):
    """``python <script> args``; returns (CompletedProcess, wall seconds)."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, SCRIPTS[script], *args], capture_output=True, text=True,
                            env=env or script_env(), timeout=timeout, cwd=REPO_ROOT)
    return result, time.monotonic() - start


def describe(result):
    return f"exit {result.returncode}\nSTDOUT (tail):\n{result.stdout[-2000:]}\nSTDERR (tail):\n{result.stderr[-4000:]}"


# ---------------------------------------------------------------------------
# The case table
# ---------------------------------------------------------------------------

# Flags every case starts from; a case overrides some ("{name}" is filled from the resources,
# None drops the flag, True makes it a bare switch).
BASE_ARGS = {
    "sd": {"--pretrained_model_name_or_path": "{model}", "--train_data_dir": "{images}", "--output_dir": "{out}",
           "--resolution": "64", "--train_batch_size": "2", "--self_sample_steps": "2", "--max_train_steps": "1",
           "--learning_rate": "1e-3", "--report_to": "none", "--seed": "0"},
    "ad": {"--pretrained_model_name_or_path": "{model}", "--motion_adapter_name_or_path": "{adapter}",
           "--video_folder": "{video_folder}", "--metadata_file": "{metadata}", "--output_dir": "{out}",
           "--resolution": "64", "--num_frames": "4", "--sample_stride": "1", "--train_batch_size": "1",
           "--self_sample_steps": "2", "--max_train_steps": "1", "--learning_rate": "1e-3", "--report_to": "none",
           "--seed": "0"},
    "xl": {"--pretrained_model_name_or_path": "{sdxl_model}", "--train_data_dir": "{images}", "--output_dir": "{out}",
           "--resolution": "64", "--train_batch_size": "2", "--self_sample_steps": "2", "--max_train_steps": "1",
           "--learning_rate": "1e-3", "--report_to": "none", "--seed": "0"},
}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    script: str  # "sd", "ad" or "xl"
    overrides: Dict[str, object]
    problem: Tuple[str, ...]  # all of these must be in the error line: they name the problem
    fix: str  # a regex (case-insensitive) the error line must match: it says how to fix the problem
    env: Dict[str, str] = dataclasses.field(default_factory=dict)
    setup: Optional[str] = None  # "resume_copy": the output dir starts as a copy of the rank-8 run

    def __str__(self):
        return self.id


# Every clip is shorter than --num_frames, so skipping bad clips cannot help: the fix is fewer frames.
NUM_FRAMES_FIX = (r"\b(lower|reduce|decrease)\b[^.;]{0,40}--num_frames|(smaller|fewer|lower) --num_frames"
                  r"|--num_frames[^.;]{0,20}(or less|or fewer|at most|<=)")

CASES = [
    Case("sd-nonexistent-model", "sd", {"--pretrained_model_name_or_path": "{missing_model}"},
         ("--pretrained_model_name_or_path", "no such folder"), r"pass a diffusers model folder|hub id"),
    Case("ad-nonexistent-model", "ad", {"--pretrained_model_name_or_path": "{missing_model}"},
         ("--pretrained_model_name_or_path", "no such folder"), r"pass a diffusers model folder|hub id"),
    Case("sd-model-without-unet", "sd", {"--pretrained_model_name_or_path": "{model_no_unet}"},
         ("--pretrained_model_name_or_path", "'unet'"), r"save_pretrained"),
    Case("sd-missing-caption-column", "sd", {"--caption_column": "nonexistent"},
         ("--caption_column", "'nonexistent'"), r"columns are"),
    Case("ad-missing-caption-column", "ad", {"--caption_column": "nonexistent"},
         ("--caption_column", "'nonexistent'"), r"columns are"),
    Case("sd-pickapic-truncated-jpeg", "sd", {"--train_data_dir": None, "--dataset_name": "{pickapic_corrupt}"},
         ("row 0", "decode"), r"--on_bad_sample skip|remove it"),
    Case("sd-pickapic-all-ties", "sd", {"--train_data_dir": None, "--dataset_name": "{pickapic_ties}"},
         ("empty", "ties"), r"check --dataset_name"),
    Case("sd-resolution-not-multiple-of-8", "sd", {"--resolution": "60"},
         ("--resolution 60",), r"multiple of 8"),
    Case("ad-resolution-not-multiple-of-8", "ad", {"--resolution": "60"},
         ("--resolution 60",), r"multiple of 8"),
    Case("sd-snapshot-steps-0", "sd", {"--snapshot_steps": "0"},
         ("--snapshot_steps 0",), r"at least 1"),
    Case("sd-max-snapshots-1", "sd", {"--max_snapshots": "1"},
         ("--max_snapshots 1",), r">= ?2"),
    Case("sd-rank-0", "sd", {"--rank": "0"},
         ("--rank 0",), r"at least 1"),
    Case("sd-resume-other-rank", "sd",
         {"--rank": "4", "--resume_from_checkpoint": "latest", "--max_train_steps": "2", "--checkpointing_steps": "1"},
         ("rank=8", "rank=4"), r"same setting|new --output_dir", setup="resume_copy"),
    Case("ad-num-frames-longer-than-every-video", "ad",
         {"--num_frames": "8", "--on_bad_sample": "error"},
         ("--num_frames 8", "frames"), NUM_FRAMES_FIX),
    Case("sd-xformers-without-cuda", "sd", {"--enable_xformers_memory_efficient_attention": True},
         ("--enable_xformers_memory_efficient_attention", "CUDA"), r"drop the flag",
         env={"CUDA_VISIBLE_DEVICES": ""}),
    Case("ad-xformers-without-cuda", "ad", {"--enable_xformers_memory_efficient_attention": True},
         ("--enable_xformers_memory_efficient_attention", "CUDA"), r"drop the flag",
         env={"CUDA_VISIBLE_DEVICES": ""}),
    Case("sd-8bit-adam-without-bitsandbytes", "sd", {"--use_8bit_adam": True},
         ("--use_8bit_adam", "bitsandbytes"), r"pip install bitsandbytes|drop the flag",
         env={"PYTHONPATH": "{fake_bnb}"}),
    Case("ad-8bit-adam-without-bitsandbytes", "ad", {"--use_8bit_adam": True},
         ("--use_8bit_adam", "bitsandbytes"), r"pip install bitsandbytes|drop the flag",
         env={"PYTHONPATH": "{fake_bnb}"}),
    Case("xl-nonexistent-model", "xl", {"--pretrained_model_name_or_path": "{missing_model}"},
         ("--pretrained_model_name_or_path", "no such folder"), r"pass a diffusers model folder|hub id"),
    Case("xl-sd15-model", "xl", {"--pretrained_model_name_or_path": "{model}"},
         ("--pretrained_model_name_or_path", "not an SDXL"), r"train_sspo_sd15\.py"),
    Case("xl-nonexistent-vae", "xl", {"--pretrained_vae_model_name_or_path": "{missing_model}"},
         ("--pretrained_vae_model_name_or_path", "no such folder"), r"pass an AutoencoderKL folder|hub id"),
    Case("xl-missing-caption-column", "xl", {"--caption_column": "nonexistent"},
         ("--caption_column", "'nonexistent'"), r"columns are"),
    Case("xl-pickapic-truncated-jpeg", "xl", {"--train_data_dir": None, "--dataset_name": "{pickapic_corrupt}"},
         ("row 0", "decode"), r"--on_bad_sample skip|remove it"),
    Case("xl-resolution-not-multiple-of-8", "xl", {"--resolution": "60"},
         ("--resolution 60",), r"multiple of 8"),
    Case("ad-missing-metadata-file", "ad", {"--metadata_file": "{missing_metadata}"},
         ("--metadata_file", "no such file"), r"\b(pass|check|point|create|use)\b"),
]


def build_args(case, resources, output_dir):
    values = {**resources, "out": str(output_dir)}
    args = []
    for flag, value in {**BASE_ARGS[case.script], **case.overrides}.items():
        if value is None:
            continue
        args.append(flag)
        if value is not True:
            args.append(str(value).format(**values))
    return args


def build_env(case, resources):
    extra = {}
    for key, value in case.env.items():
        value = value.format(**resources)
        if key == "PYTHONPATH" and os.environ.get("PYTHONPATH"):
            value = value + os.pathsep + os.environ["PYTHONPATH"]
        extra[key] = value
    return script_env(**extra)


def weighted_checkpoints(output_dir):
    """checkpoint-* folders (and half-written .tmp-checkpoint-*) that hold any weight file."""
    found = []
    for folder in glob.glob(os.path.join(output_dir, "checkpoint-*")) + glob.glob(os.path.join(output_dir, ".tmp-checkpoint-*")):
        for root, _, files in os.walk(folder):
            if any(name.endswith(WEIGHT_SUFFIXES) for name in files):
                found.append(os.path.basename(folder))
                break
    return sorted(found)


# ---------------------------------------------------------------------------
# Resources, and every subprocess of this module started at once in the background
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resources(tiny_model_dir, tiny_imagefolder_dir, tiny_motion_adapter_dir, tmp_path_factory):
    """Tiny model copies, data and a fake bitsandbytes; "{name}" placeholders of the table."""
    root = tmp_path_factory.mktemp("bad_input_resources")
    model_no_unet = root / "model_no_unet"
    shutil.copytree(tiny_model_dir, model_no_unet)
    shutil.rmtree(model_no_unet / "unet")
    pickapic_corrupt = root / "pickapic_corrupt"
    sspo_tiny.write_pickapic_parquet(str(pickapic_corrupt), [1, 0], corrupt_rows=(0,))
    pickapic_ties = root / "pickapic_ties"
    sspo_tiny.write_pickapic_parquet(str(pickapic_ties), [0.5, 0.5, 0.5])
    # Every clip has 6 frames: --num_frames 4 fits, --num_frames 8 is longer than all of them.
    metadata = sspo_tiny.build_tiny_video_dataset(str(root / "videos"), num_videos=2, num_frames=6, layout="chronomagic")
    # Simulate "bitsandbytes is not installed": a sitecustomize that makes the import system find
    # no such module (find_spec -> None, import -> ModuleNotFoundError), as on a machine without it.
    fake_bnb = root / "fake_site"
    fake_bnb.mkdir(parents=True)
    (fake_bnb / "sitecustomize.py").write_text(
        "import importlib.machinery\n"
        "_find_spec = importlib.machinery.PathFinder.find_spec\n"
        "def _hide_bitsandbytes(name, path=None, target=None):\n"
        "    if name == 'bitsandbytes' or name.startswith('bitsandbytes.'):\n"
        "        return None\n"
        "    return _find_spec(name, path, target)\n"
        "importlib.machinery.PathFinder.find_spec = staticmethod(_hide_bitsandbytes)\n")
    sdxl_model = sspo_tiny.build_tiny_sdxl_pipeline(str(root / "sdxl_model"))
    return {
        "model": tiny_model_dir,
        "sdxl_model": sdxl_model,
        "images": tiny_imagefolder_dir,
        "adapter": tiny_motion_adapter_dir,
        "missing_model": str(root / "no_such_model"),
        "model_no_unet": str(model_no_unet),
        "pickapic_corrupt": str(pickapic_corrupt),
        "pickapic_ties": str(pickapic_ties),
        "video_folder": str(root / "videos" / "videos"),
        "metadata": metadata,
        "missing_metadata": str(root / "videos" / "no_such_metadata.csv"),
        "fake_bnb": str(fake_bnb),
    }


@dataclasses.dataclass
class CaseRun:
    result: subprocess.CompletedProcess
    seconds: float
    output_dir: str
    lora_before: Optional[bytes]  # the LoRA already in the output dir before the run (resume case)
    checkpoints_before: Tuple[str, ...]


def rank8_args(resources, output_dir):
    """A real 1-step SD run with --rank 8 and a checkpoint every step."""
    return build_args(Case("rank8", "sd", {"--checkpointing_steps": "1", "--rank": "8"}, (), ""), resources, output_dir)


def token_args(resources, output_dir):
    """2 steps with validation images, a checkpoint every step, tensorboard, and --hub_token
    (no --push_to_hub): everything that could write the token somewhere."""
    return build_args(Case("token", "sd", {
        "--max_train_steps": "2", "--checkpointing_steps": "1", "--report_to": "tensorboard",
        "--train_batch_size": "1", "--self_sample_steps": "1", "--validation_prompts": "a red circle on a blue background",
        "--validation_steps": "2", "--num_validation_images": "1", "--validation_inference_steps": "1",
        "--hub_token": FAKE_TOKEN}, (), ""), resources, output_dir)


def run_case(case, resources, output_dir, rank8_future):
    lora_before, checkpoints_before = None, ()
    if case.setup == "resume_copy":
        rank8_dir = rank8_future.result()
        shutil.copytree(rank8_dir, output_dir)
        lora_before = open(os.path.join(output_dir, "pytorch_lora_weights.safetensors"), "rb").read()
        checkpoints_before = tuple(weighted_checkpoints(output_dir))
    result, seconds = run_python(case.script, build_args(case, resources, output_dir), env=build_env(case, resources))
    return CaseRun(result, seconds, str(output_dir), lora_before, checkpoints_before)


def run_rank8(resources, output_dir):
    result, _ = run_python("sd", rank8_args(resources, output_dir))
    assert result.returncode == 0, f"the rank-8 run for the resume case failed\n{describe(result)}"
    assert os.path.isdir(os.path.join(output_dir, "checkpoint-1"))
    assert os.path.isfile(os.path.join(output_dir, "pytorch_lora_weights.safetensors"))
    return str(output_dir)


@pytest.fixture(scope="module")
def background(request, resources, tmp_path_factory):
    """Start this module's selected subprocesses together, SSPO_BAD_INPUT_JOBS (default 2) at a
    time: the shared rank-8 checkpoint run first, then the token run, --help and the cases
    (the resume case, which waits for the rank-8 run, last). Maps a name to its Future."""
    items = [item for item in request.session.items if item.module is request.module]
    names = {item.originalname for item in items}
    cases = [item.callspec.params["case"] for item in items
             if hasattr(item, "callspec") and "case" in item.callspec.params]
    cases.sort(key=lambda case: case.setup is not None)
    root = tmp_path_factory.mktemp("bad_input_runs")
    jobs = max(1, int(os.environ.get("SSPO_BAD_INPUT_JOBS", "2")))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {}
        if any(case.setup == "resume_copy" for case in cases):
            futures["rank8"] = pool.submit(run_rank8, resources, root / "rank8_run")
        if "test_hub_token_never_reaches_disk_or_logs" in names:
            env = script_env()
            env.pop("HF_TOKEN", None)
            futures["token"] = pool.submit(run_python, "sd", token_args(resources, root / "token_run"), env)
            futures["token_dir"] = root / "token_run"
        if "test_hub_token_help_recommends_login_or_env_var" in names:
            futures["help"] = pool.submit(run_python, "sd", ["--help"])
        for case in cases:
            futures[case.id] = pool.submit(run_case, case, resources, root / case.id, futures.get("rank8"))
        yield futures


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_fails_with_one_clear_line(case, background):
    run = background[case.id].result()
    result, stderr = run.result, run.result.stderr
    assert result.returncode != 0, f"[{case.id}] exited 0 on bad input\n{describe(result)}"
    assert run.seconds < MAX_CASE_SECONDS, f"[{case.id}] took {run.seconds:.0f} s to fail\n{describe(result)}"
    assert "Traceback" not in stderr, f"[{case.id}] printed a traceback\n{describe(result)}"
    lines = stderr.strip().splitlines()
    last_line = lines[-1] if lines else ""
    assert last_line.startswith("error: "), f"[{case.id}] last stderr line is not 'error: ...'\n{describe(result)}"
    assert sum(line.startswith("error: ") for line in lines) == 1, f"[{case.id}] several 'error: ' lines\n{describe(result)}"
    for needle in case.problem:
        assert needle in last_line, f"[{case.id}] error line does not name the problem ({needle!r}): {last_line}"
    assert re.search(case.fix, last_line, re.IGNORECASE), (
        f"[{case.id}] error line does not say how to fix it (expected /{case.fix}/): {last_line}")

    lora = os.path.join(run.output_dir, "pytorch_lora_weights.safetensors")
    if run.lora_before is None:
        assert not os.path.exists(lora), f"[{case.id}] wrote a LoRA despite the error"
        assert weighted_checkpoints(run.output_dir) == [], f"[{case.id}] wrote a checkpoint despite the error"
    else:
        assert run.checkpoints_before, "the rank-8 run left no checkpoint to resume from"
        assert open(lora, "rb").read() == run.lora_before, f"[{case.id}] the failed resume changed the existing LoRA"
        assert tuple(weighted_checkpoints(run.output_dir)) == run.checkpoints_before, (
            f"[{case.id}] the failed resume added or removed checkpoints: {weighted_checkpoints(run.output_dir)}")


def test_case_table_covers_every_script():
    assert len(CASES) >= 13 and len({case.id for case in CASES}) == len(CASES)
    assert {case.script for case in CASES} == {"sd", "ad", "xl"}


# ---------------------------------------------------------------------------
# The shapes world's commands
# ---------------------------------------------------------------------------

SHAPES_WORLD = os.path.join(REPO_ROOT, "shapes_world.py")
MODEL_FIX = r"pass a shapes-world model folder"


@dataclasses.dataclass(frozen=True)
class ShapesCase:
    id: str
    args: Tuple[str, ...]  # "{name}" is filled from shapes_resources; outputs are relative to an empty cwd
    problem: Tuple[str, ...]  # all of these must be in the error line
    fix: str  # a regex (case-insensitive) the error line must match

    def __str__(self):
        return self.id


SHAPES_CASES = [
    ShapesCase("check-nonexistent-model", ("check", "--model", "{missing}", "--prompts", "{prompts}"),
               ("--model", "no such folder"), MODEL_FIX),
    ShapesCase("check-missing-prompt-file", ("check", "--model", "{model}", "--prompts", "{missing}.txt",
                                             "--output", "check.json"),
               ("--prompts", "no such file"), r"shapes_world\.py prompts"),
    ShapesCase("check-prompt-file-of-other-text", ("check", "--model", "{model}", "--prompts", "{cat_prompts}"),
               ("--prompts", "line 1", "not a shapes-world caption"), r"'a photo of a cat'"),
    ShapesCase("pretrain-negative-unet-steps", ("pretrain", "--unet_steps", "-5", "--output_dir", "model"),
               ("--unet_steps -5",), r"at least 1"),
    ShapesCase("pretrain-mismatch-rate-above-1", ("pretrain", "--mismatch_rate", "1.5", "--output_dir", "model"),
               ("--mismatch_rate 1.5",), r"\[0, 1\]"),
    ShapesCase("finetune-decoder-nonexistent-model", ("finetune_decoder", "--model", "{missing}"),
               ("--model", "no such folder"), MODEL_FIX),
    ShapesCase("pretrain-video-zero-steps", ("pretrain_video", "--model", "{model}", "--steps", "0",
                                             "--output_dir", "adapter"), ("--steps 0",), r"at least 1"),
    ShapesCase("preferences-negative-guidance-scale", ("preferences", "--model", "{model}", "--guidance_scale", "-3",
                                                       "--output_dir", "prefs"),
               ("--guidance_scale -3",), r"at least 1"),
    ShapesCase("video-preferences-nonexistent-adapter", ("video_preferences", "--model", "{model}", "--motion_adapter",
                                                         "{missing}", "--output_dir", "videos"),
               ("--motion_adapter", "no such folder"), r"pass a MotionAdapter folder"),
    ShapesCase("prompts-zero", ("prompts", "--num_prompts", "0", "--output_dir", "data"),
               ("--num_prompts 0",), r"at least 1"),
    ShapesCase("pretrain-sdxl-zero-unet-steps", ("pretrain_sdxl", "--unet_steps", "0", "--output_dir", "model"),
               ("--unet_steps",), r"at least 1"),
]


def folder_state(path):
    """(relative path, size, mtime) of everything under ``path``."""
    state = []
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            info = os.stat(full)
            state.append((os.path.relpath(full, path), info.st_size, info.st_mtime_ns))
    return sorted(state)


@pytest.fixture(scope="module")
def shapes_resources(tiny_model_dir, tmp_path_factory):
    """A model folder (the tiny pipeline has the shapes model's layout), a broken copy, prompt files."""
    import shapes_world

    root = tmp_path_factory.mktemp("shapes_bad_input_resources")
    model_no_unet = root / "model_no_unet"
    shutil.copytree(tiny_model_dir, model_no_unet)
    shutil.rmtree(model_no_unet / "unet")
    prompts, cat_prompts = root / "prompts.txt", root / "cat_prompts.txt"
    prompts.write_text("".join(spec.caption + "\n" for spec in shapes_world.image_split()[0][:2]))
    cat_prompts.write_text("a photo of a cat\n")
    single_prompt = root / "single_prompt.txt"
    single_prompt.write_text(shapes_world.image_split()[0][0].caption + "\n")
    adapter = root / "adapter"  # check reads only its config.json
    adapter.mkdir()
    (adapter / "config.json").write_text("{}")
    return {"model": tiny_model_dir, "model_no_unet": str(model_no_unet), "prompts": str(prompts),
            "cat_prompts": str(cat_prompts), "single_prompt": str(single_prompt), "adapter": str(adapter),
            "missing": str(root / "no_such_thing")}


@pytest.fixture(scope="module")
def shapes_runs(request, shapes_resources, tmp_path_factory):
    """Every selected shapes-world case, SSPO_BAD_INPUT_JOBS (default 2) at a time, each in its own
    empty working directory. Maps a case id to (CompletedProcess, seconds, working directory)."""
    cases = [item.callspec.params["shapes_case"] for item in request.session.items
             if item.module is request.module and hasattr(item, "callspec") and "shapes_case" in item.callspec.params]
    root = tmp_path_factory.mktemp("shapes_bad_input_runs")

    def run(case):
        cwd = root / case.id
        cwd.mkdir()
        start = time.monotonic()
        result = subprocess.run([sys.executable, SHAPES_WORLD, *(arg.format(**shapes_resources) for arg in case.args)],
                                capture_output=True, text=True, env=script_env(), timeout=SUBPROCESS_TIMEOUT, cwd=cwd)
        return result, time.monotonic() - start, cwd

    before = {name: folder_state(shapes_resources[name]) for name in ("model", "model_no_unet")}
    jobs = max(1, int(os.environ.get("SSPO_BAD_INPUT_JOBS", "2")))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {case.id: pool.submit(run, case) for case in cases}
        runs = {case_id: future.result() for case_id, future in futures.items()}
    for name, state in before.items():
        assert folder_state(shapes_resources[name]) == state, f"a shapes-world case wrote into --model {name}"
    return runs


@pytest.mark.slow  # 11 command-line starts, about 90 s; the in-process flag cases below stay in the default suite
@pytest.mark.parametrize("shapes_case", SHAPES_CASES, ids=str)
def test_shapes_world_bad_input_fails_with_one_clear_line_and_writes_nothing(shapes_case, shapes_runs):
    result, seconds, cwd = shapes_runs[shapes_case.id]
    case_id, stderr = shapes_case.id, result.stderr
    assert result.returncode == 2, f"[{case_id}] exit status is not 2\n{describe(result)}"
    assert "Traceback" not in stderr, f"[{case_id}] printed a traceback\n{describe(result)}"
    lines = stderr.strip().splitlines()
    last_line = lines[-1] if lines else ""
    assert last_line.startswith("error: "), f"[{case_id}] last stderr line is not 'error: ...'\n{describe(result)}"
    assert sum("error:" in line for line in lines) == 1, f"[{case_id}] several error lines\n{describe(result)}"
    for needle in shapes_case.problem:
        assert needle in last_line, f"[{case_id}] error line does not name the problem ({needle!r}): {last_line}"
    assert re.search(shapes_case.fix, last_line, re.IGNORECASE), (
        f"[{case_id}] error line does not say what is expected (/{shapes_case.fix}/): {last_line}")
    assert os.listdir(cwd) == [], f"[{case_id}] wrote {os.listdir(cwd)} despite the error"
    assert seconds < MAX_CASE_SECONDS, f"[{case_id}] took {seconds:.0f} s to fail\n{describe(result)}"


# More bad flags, checked in-process (parse_args raises what the command line prints as 'error: ...').
SHAPES_FLAG_CASES = [
    ("check --model {model} --prompts {prompts} --num_inference_steps 0", "--num_inference_steps 0 must be at least 1"),
    ("check --model {model_no_unet} --prompts {prompts}", "has no 'unet'"),
    ("check --model {model} --prompts {prompts} --guidance_scale 0.5", "--guidance_scale 0.5 must be at least 1"),
    ("check --model {model} --prompts {single_prompt}", "at least 2 different captions"),
    ("check --model {model} --prompts {prompts} --motion_adapter {model}", "--motion_adapter .* has no 'config.json'"),
    ("check --model {model} --prompts {prompts} --motion_adapter {adapter}", "line 1 is an image caption"),
    ("pretrain --vae_steps 0", "--vae_steps 0 must be at least 1"),
    ("pretrain --num_renders 0", "--num_renders 0 must be at least 1"),
    ("pretrain --batch_size 0", "--batch_size 0 must be at least 1"),
    ("pretrain --threads 0", "--threads 0 must be at least 1"),
    ("pretrain --decoder_steps -1", "--decoder_steps -1 must be at least 0"),
    ("pretrain --damage_rate -0.1", r"--damage_rate -0.1 must be in \[0, 1\]"),
    ("pretrain --unet_lr 0", "--unet_lr 0.0 must be positive"),
    ("pretrain --snr_gamma -5", "--snr_gamma -5.0 must be positive"),
    ("pretrain --ema_decay 1", r"--ema_decay 1.0 must be in \(0, 1\)"),
    ("pretrain --vae_latent_noise nan", "--vae_latent_noise nan must be at least 0"),
    ("finetune_decoder --model {model} --decoder_steps 0", "--decoder_steps 0 must be at least 1"),
    ("finetune_decoder --model {model}", "has no 'pretraining.json'"),
    ("pretrain_video --model {model} --num_clips 0", "--num_clips 0 must be at least 1"),
    ("pretrain_video --model {model} --num_frames 1", r"--num_frames 1 must be in \[2, 32\]"),
    ("pretrain_video --model {missing}", "--model .* no such folder"),
    ("pretrain_video --model {model} --train_text_encoder", "--train_text_encoder needs --video_model_dir"),
    ("preferences --model {model} --output_dir o --num_captions 0", "--num_captions 0 must be at least 1"),
    ("preferences --model {model} --output_dir o --num_captions 100000", r"only \d+ training captions"),
    ("preferences --model {model} --output_dir o --margin -0.1", r"--margin -0.1 must be in \[0, 1\)"),
    ("preferences --model {model} --output_dir o --guidance_scale nan", "--guidance_scale nan must be at least 1"),
    ("video_preferences --model {model} --output_dir o", "video_preferences needs --motion_adapter"),
    ("video_preferences --model {model} --motion_adapter {adapter} --output_dir o --pairs_per_caption 0",
     "--pairs_per_caption 0 must be at least 1"),
]


@pytest.mark.parametrize("command,message", SHAPES_FLAG_CASES, ids=[c for c, _ in SHAPES_FLAG_CASES])
def test_shapes_world_rejects_bad_flags_before_running(command, message, shapes_resources, tmp_path, monkeypatch):
    import shapes_world
    from sspo_utils import SSPOInputError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SSPOInputError, match=message):
        shapes_world.parse_args(command.format(**shapes_resources).split())
    assert os.listdir(tmp_path) == []


def test_shapes_world_accepts_the_documented_commands(shapes_resources, tmp_path, monkeypatch):
    """The checks reject only bad input: the commands the README and the module docstring show parse."""
    import shapes_world

    monkeypatch.chdir(REPO_ROOT)
    for command in ("check --model models/shapes-sd15 --prompts data/shapes-heldout-image-prompts.txt",
                    "check --model models/shapes-sd15-video --motion_adapter models/shapes-motion-adapter "
                    "--prompts data/shapes-heldout-video-prompts.txt",
                    "pretrain --output_dir {out} --threads 2 --unet_steps 1800 --prediction_type v_prediction "
                    "--unet_lr 2e-3 --ema_decay 0.999 --decoder_steps 250",
                    "pretrain_video --model models/shapes-sd15 --video_model_dir {out}/v --output_dir {out}/a",
                    "preferences --model models/shapes-sd15 --guidance_scale 2 --output_dir {out}",
                    "video_preferences --model models/shapes-sd15-video --guidance_scale 2 --pairs_per_caption 2 "
                    "--motion_adapter models/shapes-motion-adapter --output_dir {out}",
                    "prompts --output_dir {out}", "finetune_decoder --model models/shapes-sd15"):
        assert shapes_world.parse_args(command.format(out=tmp_path / "out").split()).command == command.split()[0]
    assert os.listdir(tmp_path) == []


def test_shapes_case_table_covers_every_command(capsys):
    import shapes_world

    with pytest.raises(SystemExit):
        shapes_world.parse_args(["--help"])
    commands = set(re.search(r"\{([\w,]+)\}", capsys.readouterr().out).group(1).split(","))
    assert {case.args[0] for case in SHAPES_CASES} == commands
    assert len({case.id for case in SHAPES_CASES}) == len(SHAPES_CASES)


# ---------------------------------------------------------------------------
# --hub_token never leaks
# ---------------------------------------------------------------------------


def test_hub_token_never_reaches_disk_or_logs(background):
    result, _ = background["token"].result()
    output_dir = background["token_dir"]
    assert result.returncode == 0, describe(result)
    assert FAKE_TOKEN not in result.stdout and FAKE_TOKEN not in result.stderr, "the token was printed"

    token = FAKE_TOKEN.encode()
    files = [p for p in output_dir.rglob("*") if p.is_file()]
    kinds = {p.name.split(".")[0] if p.name.startswith("events") else p.suffix for p in files}
    # The run really wrote what could leak: tensorboard events, a model card, checkpoints, json.
    assert list(output_dir.rglob("events.out.tfevents.*")), sorted(map(str, files))
    assert (output_dir / "README.md").is_file() and list(output_dir.glob("checkpoint-*"))
    assert ".json" in kinds and ".safetensors" in kinds
    leaking = [str(p.relative_to(output_dir)) for p in files if token in p.read_bytes() or FAKE_TOKEN in str(p)]
    assert leaking == [], f"the hub token is written in {leaking}"


def test_hub_token_help_recommends_login_or_env_var(background):
    result, _ = background["help"].result()
    assert result.returncode == 0, describe(result)
    help_text = " ".join(result.stdout.split())  # argparse wraps lines
    # The option's entry, not the usage line (where it reads "[--hub_token HUB_TOKEN]").
    match = re.search(r"(?<!\[)--hub_token HUB_TOKEN\s+(.*?)(?=\s--\w|\Z)", help_text)
    assert match, f"--hub_token is not in --help:\n{result.stdout}"
    assert "hf auth login" in match.group(1) or "HF_TOKEN" in match.group(1), (
        f"--hub_token help does not recommend `hf auth login` or HF_TOKEN: {match.group(1)!r}")


# ---------------------------------------------------------------------------
# Static checks: no remote code, no pickle loading
# ---------------------------------------------------------------------------


def repo_python_files(include_subfolders):
    if not include_subfolders:
        return sorted(glob.glob(os.path.join(REPO_ROOT, "*.py")))
    paths = []
    for root, dirs, files in os.walk(REPO_ROOT):
        rel = os.path.relpath(root, REPO_ROOT)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "__pycache__", "venv", "node_modules")
                   and not (rel == "." and d in ("build", "dist"))]
        paths += [os.path.join(root, name) for name in files if name.endswith(".py")]
    return sorted(paths)


def test_no_trust_remote_code_in_repo_sources():
    files = repo_python_files(include_subfolders=False)
    assert any(path.endswith("train_sspo_sd15.py") for path in files)
    offenders = []
    for path in files:
        source = open(path, encoding="utf-8").read()
        for match in re.finditer(r"trust_remote_code\s*=\s*True", source):
            offenders.append(f"{os.path.basename(path)}:{source.count(chr(10), 0, match.start()) + 1}")
        for node in ast.walk(ast.parse(source, filename=path)):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and not (
                    isinstance(node.value, ast.Constant) and node.value.value is False):
                offenders.append(f"{os.path.basename(path)}:{node.value.lineno} (trust_remote_code not literally False)")
    assert offenders == [], f"trust_remote_code enabled at {offenders}"


def torch_load_calls(tree):
    """Every call of torch.load in ``tree``, also through ``import torch as th`` or
    ``from torch import load [as name]``."""
    torch_names, load_names = {"torch"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            torch_names |= {alias.asname or alias.name for alias in node.names if alias.name == "torch"}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            load_names |= {alias.asname or alias.name for alias in node.names if alias.name == "load"}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr == "load" and isinstance(func.value, ast.Name)
                and func.value.id in torch_names) or (isinstance(func, ast.Name) and func.id in load_names):
            yield node


def test_every_torch_load_is_weights_only():
    offenders = []
    for path in repo_python_files(include_subfolders=True):
        tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
        for call in torch_load_calls(tree):
            weights_only = [k for k in call.keywords if k.arg == "weights_only"]
            if not (weights_only and isinstance(weights_only[0].value, ast.Constant) and weights_only[0].value.value is True):
                offenders.append(f"{os.path.relpath(path, REPO_ROOT)}:{call.lineno}")
    assert offenders == [], f"torch.load without weights_only=True at {offenders}"
