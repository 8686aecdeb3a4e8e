"""Multi-process flags shared by the training launchers; importing this module defines them.

With none given, `jax.distributed` starts by itself on a TPU VM or in a SLURM job with several
tasks (--multihost=auto); elsewhere give every process --coordinator_address=HOST:PORT (process
0's), --num_processes=N and its --process_id=I.
"""

from absl import flags

from dpiqa_jax.train import sharding

MULTIHOST = flags.DEFINE_enum("multihost", "auto", sharding.MULTIHOST_MODES,
                              "jax.distributed: auto-detect (TPU VM, SLURM), always, or never.")
COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                  "HOST:PORT of process 0 (multi-process runs).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize() -> None:
    """Starts jax.distributed as the flags say; call first in main."""
    sharding.initialize_distributed(MULTIHOST.value, COORDINATOR.value, NUM_PROCESSES.value,
                               PROCESS_ID.value)
