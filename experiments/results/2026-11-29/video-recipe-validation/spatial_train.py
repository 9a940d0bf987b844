# The video trainer with its LoRA on the image layers' attention only (motion modules untouched): a probe-local
# override of the module's ALL_ATTENTION target list, so the trainer itself is unchanged.
import sys
sys.path.insert(0, '.')
import train_sspo_animatediff as trainer
trainer.ALL_ATTENTION = r"^(?!.*motion_modules).*\.(to_q|to_k|to_v|to_out\.0)$"
trainer.main(trainer.parse_args())
