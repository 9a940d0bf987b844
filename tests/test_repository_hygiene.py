"""The repository as a product: no tracked file names a path of the checkout it was made in, and every folder of
raw results is reached from the README or docs/ (the rest lives in git history)."""

import os
import re
import subprocess

import pytest


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = "experiments/results"
# An absolute path starting at a path boundary (not inside a URL, a relative path or a home shorthand).
BOUNDARY = r"(?<![\w.:/~-])"
MACHINE_PATH = re.compile(BOUNDARY + r"/(work|root|home|tmp)/[^\s'\"`()<>\[\]{},;|*?=]*")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_files():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return [path for path in listed.stdout.split("\0") if path and os.path.isfile(os.path.join(REPO_ROOT, path))]


def text_of(path):
    """The file's text, or None for a binary file (a NUL byte near the start, as git decides)."""
    with open(os.path.join(REPO_ROOT, path), "rb") as f:
        data = f.read()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def points_into_checkout(path, tracked, tracked_dirs, top_files):
    """Whether an absolute path names something of this repository: from some component on, it is a tracked
    file or folder below the top level, one of the repository's top-level scripts, or its .venv or .git.
    (Generic top-level names alone, such as README.md or data, do not count.)"""
    parts = [p for p in path.split("/") if p]
    for start in range(1, len(parts)):
        rest = "/".join(parts[start:]).rstrip(".")
        if parts[start] in (".venv", ".git") or parts[start] in top_files:
            return True
        if "/" in rest and (rest in tracked or rest in tracked_dirs):
            return True
    return False


def machine_paths(text, tracked, tracked_dirs, top_files):
    found = []
    for match in MACHINE_PATH.finditer(text):
        path = match.group(0)
        # This machine keeps every checkout and scratch folder there: no such path belongs in a clone.
        if match.group(1) == "work" or points_into_checkout(path, tracked, tracked_dirs, top_files):
            found.append(path)
    root = re.escape(os.path.realpath(REPO_ROOT))
    found += re.findall(BOUNDARY + root + r"(?=/|\b)[^\s'\"`]*", text) if len(REPO_ROOT) > 1 else []
    return found


def test_the_rule_flags_checkout_paths_and_passes_urls_and_scratch_folders():
    tracked = {"train_sspo_sd15.py", "data/shapes-pickapic/preferences.json"}
    dirs, top = {"data", "data/shapes-pickapic"}, {"train_sspo_sd15.py"}
    prefix = "/" + "home/ann/sspo"
    flagged = (f"{prefix}/train_sspo_sd15.py", f"{prefix}/data/shapes-pickapic", "/" + "tmp/x/.venv/bin/python",
               "/" + "work/anything")
    for path in flagged:
        assert machine_paths(f'"{path}"', tracked, dirs, top) == [path]
    passed = ("https://example.com/" + "home/data/shapes-pickapic", "/" + "tmp/smoke/phases.png",
              "/" + "tmp/data/other.csv", "/" + "tmp/run/README.md", "data/shapes-pickapic",
              "~/" + "home/x/train_sspo_sd15.py")
    for text in passed:
        assert machine_paths(text, tracked, dirs, top) == [], text


def test_no_tracked_file_holds_an_absolute_path_into_a_checkout():
    files = tracked_files()
    tracked = set(files)
    tracked_dirs = {os.path.dirname(f) for f in files}
    while "" in tracked_dirs:
        tracked_dirs.discard("")
    for d in list(tracked_dirs):
        while d:
            tracked_dirs.add(d)
            d = os.path.dirname(d)
    top_files = {f for f in files if "/" not in f and f.endswith(".py")}
    offenders = {}
    for path in files:
        text = text_of(path)
        if text is None:
            continue
        found = machine_paths(text, tracked, tracked_dirs, top_files)
        if found:
            offenders[path] = sorted(set(found))[:3]
    assert not offenders, f"{len(offenders)} tracked files hold absolute paths (write them relative to the " \
                          f"repository root): {dict(list(offenders.items())[:10])}"


def result_folders():
    """The units of experiments/results/: each top-level folder, except that a folder named by a bare date
    is a container, whose entries count one by one."""
    base = os.path.join(REPO_ROOT, RESULTS)
    units = []
    for name in sorted(os.listdir(base)):
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", name) and os.path.isdir(os.path.join(base, name)):
            units += [f"{RESULTS}/{name}/{child}" for child in sorted(os.listdir(os.path.join(base, name)))]
        else:
            units.append(f"{RESULTS}/{name}")
    return units


def linked_paths():
    """Every relative markdown link target of README.md and docs/, as a path from the repository root."""
    pages = ["README.md"] + [os.path.relpath(os.path.join(d, f), REPO_ROOT)
                             for d, _, names in os.walk(os.path.join(REPO_ROOT, "docs")) for f in names
                             if f.endswith(".md")]
    links = {}
    for page in pages:
        with open(os.path.join(REPO_ROOT, page), encoding="utf-8") as f:
            text = f.read()
        for target in MARKDOWN_LINK.findall(text):
            target = target.split("#", 1)[0]
            if not target or re.match(r"[a-z]+:", target):
                continue
            path = os.path.normpath(os.path.join(os.path.dirname(page), target))
            links.setdefault(path, page)
    return links


def test_every_link_of_the_readme_and_docs_resolves():
    missing = {path: page for path, page in linked_paths().items() if not os.path.exists(os.path.join(REPO_ROOT, path))}
    assert not missing, f"links to nothing: {missing}"


def test_every_results_folder_is_linked_from_the_readme_or_docs():
    links = linked_paths()
    orphans = [unit for unit in result_folders()
               if not any(path == unit or path.startswith(unit + "/") for path in links)]
    assert not orphans, (f"{len(orphans)} folders under {RESULTS}/ are linked from neither README.md nor docs/: "
                         f"link them or delete them (git history keeps them): {orphans}")


def test_the_study_records_its_commands_relative_to_the_repository_root(tmp_path, monkeypatch):
    """A run launched with absolute paths (the interpreter, the trainer) is recorded relative to the root."""
    import json
    import sys

    from experiments import shapes_alignment as study
    from experiments import study_runs

    args = study.parse_args(["--output_dir", str(tmp_path)])
    run = study.beta_runs(args)[0]
    monkeypatch.setattr(study_runs, "train_command",
                        lambda args, run: [sys.executable, os.path.join(REPO_ROOT, "train_sspo_sd15.py"), "--help"])
    study_runs.train(args, run)
    with open(tmp_path / "runs" / run.name / "timing.json") as f:
        timing = json.load(f)
    assert timing["command"] == ["python", "train_sspo_sd15.py", "--help"]
    assert timing["cpu_seconds"] > 0


def test_the_readme_stays_a_users_page_of_at_most_200_lines():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        lines = f.read().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"
