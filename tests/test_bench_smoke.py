"""benchmarks/bench_sspo.py in smoke mode: it runs and writes its table and JSON (timings are not tested)."""

import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_smoke_writes_table_and_json(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "benchmarks", "bench_sspo.py"), "--smoke",
                             "--configs", "dpo", "sspo_probe", "sspo_10", "--output_dir", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((tmp_path / "bench_sspo.json").read_text())
    assert [row["config"] for row in report["configs"]] == ["dpo", "sspo_probe", "sspo_10"]
    for row in report["configs"]:
        assert row["step_seconds_median"] > 0 and row["peak_memory_bytes"] > 0
        assert set(row["phase_seconds_per_step"]) == {"self_sampling", "swap", "reference_forward",
                                                      "policy_forward_backward", "other"}
    assert report["configs"][2]["phase_seconds_per_step"]["self_sampling"] > 0
    assert report["configs"][1]["phase_seconds_per_step"]["self_sampling"] == 0  # the probe skips generation
    assert {"1_self_sampling_over_stock", "2_sspo_without_sampling_over_dpo", "3_overhead_ratio_sspo"} <= set(report["targets"])
    table = (tmp_path / "bench_sspo.md").read_text()
    assert "| sspo_10 |" in table and "Self-sampling pipeline vs stock pipeline" in table
