#!/usr/bin/env python
# Copyright 2026 The SSPO reference implementation authors. Apache-2.0.
"""Where does the batched vs per-micro-batch self-sample difference come from (0.667 in the latents after 20
bf16 steps on the H200, 5e-05 in fp32 on the CPU)? Rounding, or a mismatch in noise, order or conditioning?

The benchmark's own two paths (bench_sspo.self_samples: sspo_utils.self_sample_step with chunk_size=1 and with
one batched call, seed 0, the trainers' autocast) on the reduced SD1.5 architecture (random weights, as on the
GPU), batch 1 x 8 micro-batches, CFG 7.5, in bf16 (frozen weights bf16, LoRA fp32, autocast), fp32 and fp64
(everything fp64, no autocast), for several step counts, all from the same fp32 initial noise. If it is rounding, the difference shrinks from bf16 to
fp32 to fp64 and with fewer steps, each path gives the same latents when run twice, and both bf16 paths are as
far from the fp64 latents as from each other. A mismatch would leave an fp64 difference far above fp64 rounding.
The sampler's sensitivity to rounding is measured directly: the batched path again with the text embeddings
nudged by one ulp (torch.finfo(dtype).eps, relative) of the precision.

    python benchmarks/probe_batch_difference.py --output_dir benchmarks/results/probe_batch_difference_2026-12-04
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_sspo  # noqa: E402


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 5, 20], help="Self-sampling step counts.")
    parser.add_argument("--micro_batches", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--output_dir", default="probe_batch_difference")
    return parser.parse_args(input_args)


def bench_args(args, dtype):
    return bench_sspo.parse_args(["--device", "cpu", "--random_init_from_config", "sd15_reduced", "--dtype", dtype,
                                  "--resolution", str(args.resolution), "--num_threads", str(args.num_threads),
                                  "--sampling_micro_batches", str(args.micro_batches), "--self_sample_merged_copy",
                                  "off", "--output_dir", args.output_dir])


def load(args, precision):
    """The benchmark's shared model and the embeddings of its sampling measurement. fp64: the fp32 model
    (the same random weights) with every weight, LoRA included, in fp64 and no autocast."""
    bargs = bench_args(args, "fp32" if precision == "fp64" else precision)
    shared = bench_sspo.load_shared(bargs)
    shared.resolution = bargs.resolution
    if precision == "fp64":
        for model in (shared.unet, shared.text_encoder):
            torch.nn.Module.to(model, dtype=torch.float64)
        shared.negative = shared.negative.double()
        shared.dtype = torch.float64  # bench_sspo.autocast: none, as for fp32
    embeds = bench_sspo.sampling_micro_batch_embeds(bargs, shared)
    if precision == "fp64":
        embeds = [e.double() for e in embeds]
    return bargs, shared, embeds


def fp32_noise(shape, generator=None, device=None, dtype=None, layout=None):
    """The initial noise drawn in fp32 and cast, so bf16, fp32 and fp64 start from the same latents (randn in
    fp64 or bf16 draws other numbers). Both paths of a precision draw it the same way."""
    return _randn_tensor(shape, generator=generator, device=device, dtype=torch.float32, layout=layout).to(dtype)


_randn_tensor = bench_sspo.sspo_utils.randn_tensor
bench_sspo.sspo_utils.randn_tensor = fp32_noise


def sample(bargs, shared, embeds, steps, chunk_size):
    bargs.self_sample_steps = steps
    start = time.perf_counter()
    latents = torch.cat(bench_sspo.self_samples(bargs, shared, embeds, chunk_size)).double()
    return latents, time.perf_counter() - start


def stats(a, b):
    diff = (a - b).abs()
    return {"max_abs_diff": float(diff.max()), "rms_diff": float(diff.pow(2).mean().sqrt())}


def main(args):
    os.makedirs(args.output_dir, exist_ok=True)
    torch.set_num_threads(args.num_threads)
    results = {"settings": vars(args), "machine": bench_sspo.sspo_utils.machine_info("cpu"), "runs": []}
    final = {}
    for precision in ("bf16", "fp32", "fp64"):
        bargs, shared, embeds = load(args, precision)
        for steps in args.steps:
            batched, seconds_batched = sample(bargs, shared, embeds, steps, None)
            per_micro_batch, seconds_per = sample(bargs, shared, embeds, steps, 1)
            # the sampler's sensitivity: the batched path with the text embeddings nudged by one ulp of the precision
            nudged_embeds = [e * (1 + torch.finfo(e.dtype).eps) for e in embeds]
            nudged = stats(batched, sample(bargs, shared, nudged_embeds, steps, None)[0])
            row = {"precision": precision, "steps": steps, **stats(batched, per_micro_batch),
                   "one_ulp_nudge_max_abs_diff": nudged["max_abs_diff"], "one_ulp_nudge_rms_diff": nudged["rms_diff"],
                   "max_abs_latent": float(batched.abs().max()), "rms_latent": float(batched.pow(2).mean().sqrt()),
                   "seconds_batched": seconds_batched, "seconds_per_micro_batch": seconds_per}
            if steps == max(args.steps):  # same inputs, same path, run again: identical?
                row["batched_rerun_identical"] = bool(torch.equal(sample(bargs, shared, embeds, steps, None)[0], batched))
                row["per_micro_batch_rerun_identical"] = bool(
                    torch.equal(sample(bargs, shared, embeds, steps, 1)[0], per_micro_batch))
                final[precision] = {"batched": batched, "per_micro_batch": per_micro_batch}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
        del shared
    reference = final["fp64"]["batched"]
    results["distance_to_fp64"] = {f"{precision} {path}": stats(latents, reference)
                                   for precision in ("bf16", "fp32") for path, latents in final[precision].items()}
    print(json.dumps(results["distance_to_fp64"], indent=1))
    with open(os.path.join(args.output_dir, "probe_batch_difference.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"# Batched vs per-micro-batch self-samples: {results['machine']['device_name']}, torch "
             f"{results['machine']['torch']}, {results['machine']['date']}",
             "", f"sd15_reduced (random weights), {args.resolution} px, batch 1 x {args.micro_batches} micro-batches, "
             "CFG 7.5, DDIM, bench_sspo.self_samples (chunk 1 vs one batched call), seed 0.", "",
             "| precision | steps | max abs diff | RMS diff | max abs latent | RMS latent | reruns identical | "
             "one-ulp nudge of the embeddings: max abs diff | RMS diff |", "|" + " --- |" * 9]
    for row in results["runs"]:
        rerun = ("-" if "batched_rerun_identical" not in row else
                 f"{row['batched_rerun_identical']} / {row['per_micro_batch_rerun_identical']}")
        lines.append(f"| {row['precision']} | {row['steps']} | {row['max_abs_diff']:.3g} | {row['rms_diff']:.3g} | "
                     f"{row['max_abs_latent']:.3g} | {row['rms_latent']:.3g} | {rerun} | "
                     f"{row['one_ulp_nudge_max_abs_diff']:.3g} | {row['one_ulp_nudge_rms_diff']:.3g} |")
    lines += ["", f"Distance to the fp64 batched latents after {max(args.steps)} steps:", "",
              "| path | max abs diff | RMS diff |", "| --- | --- | --- |"]
    lines += [f"| {name} | {v['max_abs_diff']:.3g} | {v['rms_diff']:.3g} |"
              for name, v in results["distance_to_fp64"].items()]
    with open(os.path.join(args.output_dir, "probe_batch_difference.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(parse_args())
