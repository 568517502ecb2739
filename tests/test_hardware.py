from tuneline import hardware


def test_auto_precision_is_fp32_without_bf16_units(monkeypatch):
    hardware.cpu_flags.cache_clear()
    monkeypatch.setattr(hardware, "device_type", lambda: "cpu")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert hardware.resolve_precision("auto") == "fp32"
    # AVX512-BF16 alone is not enough: measured no faster than fp32 for training
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert hardware.resolve_precision("auto") == "fp32"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
    assert hardware.resolve_precision("auto") == "bf16"
    assert hardware.resolve_precision("fp32") == "fp32"


def test_real_cpu_flags_read():
    hardware.cpu_flags.cache_clear()
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset)


def test_training_threads_leave_busy_cores_alone(monkeypatch):
    import psutil

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(hardware, "physical_cores", lambda: 4)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 50.0)  # 2 of 4 cores busy
    assert hardware.training_threads() == (2, "2.0 of 4 cores busy with other work")
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 100.0)
    assert hardware.training_threads()[0] == 1  # never fewer than one
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 5.0)  # a quiet machine: every core
    assert hardware.training_threads() == (4, "")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the caller's explicit choice wins
    assert hardware.training_threads() == (3, "")
    monkeypatch.setenv("OMP_NUM_THREADS", "many")  # not a count: measured as before
    assert hardware.training_threads() == (4, "")


def test_runs_of_different_precision_share_a_process():
    # Accelerate keeps one precision per process; a notebook or a test session trains several runs
    from tuneline.training.pipeline import _accelerator

    assert _accelerator("bf16").mixed_precision == "bf16"
    assert _accelerator("fp32").mixed_precision == "no"
    assert _accelerator("bf16").mixed_precision == "bf16"
