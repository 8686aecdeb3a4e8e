"""Two processes on localhost form one `jax.distributed` job (one CPU device each) and train the
tiny teacher together through `launch.train`'s code path: each reads its half of every batch, both
end with the same parameters, and only process 0 writes the logs and the bundle."""

import json
import os
import socket
import subprocess
import sys

import pytest

from helpers import REPO_ROOT, child_environment

TOTAL_STEPS = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_train_one_model(tmp_path):
    port = _free_port()
    children = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(port), str(i),
                                  str(tmp_path)], env=child_environment(1), cwd=REPO_ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(2)]
    outputs = []
    try:
        for child in children:
            stdout, stderr = child.communicate(timeout=900)
            if child.returncode:
                pytest.fail(f"process failed:\n{stderr[-6000:]}")
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for child in children:
            child.kill()
    assert [o["process"] for o in outputs] == [0, 1]
    assert all(o["processes"] == 2 and o["devices"] == 2 for o in outputs)
    assert outputs[0]["params_sha256"] == outputs[1]["params_sha256"]
    assert outputs[0]["step"] == outputs[1]["step"] == TOTAL_STEPS
    assert (tmp_path / "best_model" / "model.json").is_file()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum("loss" in line for line in lines) == TOTAL_STEPS  # written once, by process 0


# --------------------------------------------------------------------------- child process


def _child(port: int, process_id: int, workdir: str) -> dict:
    import hashlib  # pylint: disable=import-outside-toplevel

    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    from configs import teacher  # pylint: disable=import-outside-toplevel
    from dpiqa_jax.train import run, sharding  # pylint: disable=import-outside-toplevel

    sharding.initialize_distributed("off", f"localhost:{port}", 2, process_id)
    config = teacher.get_config("tiny")
    config.total_steps = TOTAL_STEPS
    config.log_every_steps = 1
    result = run.train(config, workdir)
    # Each process hashes its own copy: the parameters are replicated (fsdp=1) on both devices.
    local = [np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves(
        result.final_state.params)]
    multihost_utils.sync_global_devices("hashed")
    return {"process": jax.process_index(), "processes": jax.process_count(),
            "devices": jax.device_count(), "step": int(result.final_state.step.addressable_data(0)),
            "params_sha256": hashlib.sha256(b"".join(x.tobytes() for x in local)).hexdigest()}


if __name__ == "__main__":
    print(json.dumps(_child(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])))
