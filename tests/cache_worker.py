"""One run that needs the fine-tuned teacher; test_teacher_cache.py starts two at once.

`python cache_worker.py CONFIG.json ROOT NAME`: loads the teacher, waits until every worker is ready
(ROOT/ready-*), then calls finetune_teacher, whose fine-tuning is slowed by 3 s so that the other
worker must wait for the lock. Writes ROOT/NAME.json: reused_cache, cache_key, a digest of the teacher.
"""

import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import torch

from lmdistill import api
from lmdistill.config import load_config
from lmdistill.tasks import build_task


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def slowly(run_stage):
    def slow_run_stage(*args, **kwargs):
        time.sleep(3)
        return run_stage(*args, **kwargs)
    return slow_run_stage


if __name__ == "__main__":
    config_file, root, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    logging.basicConfig(level=logging.INFO, format="lmdistill: %(message)s", stream=sys.stderr)
    api.run_stage = slowly(api.run_stage)
    config = load_config(json.loads(Path(config_file).read_text()))
    task = build_task(config.task)
    cache = Path(config.cache_dir)
    teacher, tokenizer, source, _ = api.load_teacher(config, task, cache, False)
    (root / f"ready-{name}").touch()
    while len(list(root.glob("ready-*"))) < 2:
        time.sleep(0.05)
    teacher, folder, info = api.finetune_teacher(teacher, tokenizer, source, config, task, cache, False)
    (root / f"{name}.json").write_text(json.dumps({**info, "weights": tensor_digest(teacher.state_dict())}))
