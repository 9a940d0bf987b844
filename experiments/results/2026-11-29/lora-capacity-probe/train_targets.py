"""Run train_sspo_sd15.py with the LoRA on other modules than its default (LORA_TARGETS, comma-separated)."""
import os, runpy, sys
import peft
targets = os.environ["LORA_TARGETS"].split(",")
Config = peft.LoraConfig
peft.LoraConfig = lambda *a, **k: Config(*a, **{**k, "target_modules": targets})
sys.path.insert(0, "/work/main")
sys.argv = ["train_sspo_sd15.py"] + sys.argv[1:]
runpy.run_path("/work/main/train_sspo_sd15.py", run_name="__main__")
