# Inherited by every config of ours: nothing lost, nothing silent.
# - SafeRunner (vmamba_mm.engine): checkpoints written to a temporary file and renamed
#   into place, with every process's random states (exact --resume); auto-resume skips
#   an unreadable newest checkpoint. Its checkpoint hook must be SafeCheckpointHook
#   (new checkpoint first, then last_checkpoint, then rotation), set in each config's
#   default_hooks (a base file cannot merge into the task library's default_hooks).
# - DivergenceGuardHook: training stops at the first non-finite loss (or gradient
#   norm; with AMP after max_skipped_steps overflowing steps in a row), naming the
#   epoch, iteration and loss terms; no checkpoint with non-finite weights is written.
runner_type = 'SafeRunner'
custom_hooks = [dict(type='DivergenceGuardHook', max_skipped_steps=50)]
