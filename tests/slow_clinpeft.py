"""`python tests/slow_clinpeft.py ARGS`: the clinpeft CLI with optimizer steps slowed after step 2, so a test
can kill a run between its first checkpoint and its end (used under `accelerate launch`)."""

import sys
import time

import transformers

step = transformers.Trainer.training_step


def slow_step(self, *args, **kwargs):
    if self.state.global_step >= 2:
        time.sleep(1.0)
    return step(self, *args, **kwargs)


transformers.Trainer.training_step = slow_step

if __name__ == "__main__":
    from clinpeft.cli import main

    sys.exit(main(sys.argv[1:]))
