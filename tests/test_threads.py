"""CPU threads: each process uses its share of the cores, and the user's settings win."""

import pytest

from clinpeft.errors import ClinpeftError
from clinpeft.sweep.workers import worker_env
from clinpeft.training.runtime import available_cores, set_threads, thread_count


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("CLINPEFT_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_priority_config_then_clinpeft_threads_then_omp_then_share(clean_env):
    cores = available_cores()
    assert thread_count() == (cores, f"{cores} cores / 1 process(es)")
    clean_env.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # accelerate / torchrun: more processes than cores
    assert thread_count()[0] == 1
    clean_env.setenv("OMP_NUM_THREADS", "3")  # set by the user: respected
    assert thread_count() == (3, "OMP_NUM_THREADS")
    clean_env.setenv("CLINPEFT_THREADS", "2")
    assert thread_count() == (2, "CLINPEFT_THREADS")
    assert thread_count(5) == (5, "train.threads")


def test_bad_thread_variable_is_one_line(clean_env):
    clean_env.setenv("CLINPEFT_THREADS", "many")
    with pytest.raises(ClinpeftError, match="CLINPEFT_THREADS='many'"):
        thread_count()


def test_set_threads_sets_torch(clean_env):
    import torch

    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_sweep_workers_divide_the_cores_on_cpu(clean_env):
    clean_env.setattr("torch.cuda.device_count", lambda: 0)
    envs = [worker_env(i, 2) for i in range(2)]
    assert {e["CLINPEFT_THREADS"] for e in envs} == {str(max(1, available_cores() // 2))}
    clean_env.setenv("OMP_NUM_THREADS", "4")  # the user's choice stands
    assert "CLINPEFT_THREADS" not in worker_env(0, 2)


def test_run_records_its_threads(tiny_llama, synthetic_tasks, tmp_path):
    from clinpeft.config import FinetuneConfig, load_config
    from clinpeft.recipes import finetune

    config = load_config(FinetuneConfig, None, [f"model.base={tiny_llama}", f"task.path={synthetic_tasks['mor']}",
                                                "task.max_seq_len=32", "task.max_examples=16", "train.epochs=1",
                                                "train.batch_size=8", "train.grad_accum=1", "train.threads=1",
                                                "eval.bootstrap_resamples=0", "variant=head"])
    assert finetune.main(config, tmp_path / "run", progress=False)["cpu_threads"] == 1
