"""`train.sharding: fsdp`: two gloo processes with FSDP2 follow the trajectory of one process, resume
from an unsharded checkpoint, and leave the run folder an unsharded run leaves; sharded checkpoints
hold full tensors in the unsharded layout and load back both ways."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import tuneline
from conftest import write_jsonl, write_recipe
from serve_helpers import CHATS
from tuneline.errors import RunStopped
from tuneline.training.loop import Callback


class _StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_log(self, trainer, record):
        if record["step"] == self.step:
            raise RunStopped("stopped", f"test stop at step {record['step']}")


def _metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def _files(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts)


def test_fsdp_two_processes_resume_and_match_one(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", CHATS[:24])
    write_jsonl(tmp_path / "test.jsonl", CHATS[24:])
    # no dropout: the only randomness left is the batch order, which every rank shares
    recipe = write_recipe(tmp_path / "recipe.yaml", task="generate", model=str(tiny_llama), method="full",
                          data={"train": "train.jsonl", "test": "test.jsonl"},
                          train={"epochs": 2, "lr": 5e-3, "batch_size": 5, "max_length": 64, "log_every": 1,
                                 "dropout": 0.0, "save_every": 2, "seed": 3, "sharding": "fsdp",
                                 "precision": "fp32"},  # compared to 1e-4: not the rounding of bf16
                          generate={"max_new_tokens": 4}, eval={"forgetting": {"enabled": False}},
                          # small pieces: the ranks cut their rows into different numbers of forwards,
                          # which FSDP's per-forward gathers must still pair up
                          memory={"micro_batch_tokens": 40})
    one, two = tmp_path / "one", tmp_path / "two"
    tuneline.train(recipe, output=one)  # one process: fsdp has nothing to shard over, plain training
    # The sharded run starts from an unsharded checkpoint (step 2): the files are the same either way.
    with pytest.raises(RunStopped):
        tuneline.train(recipe, output=two, callbacks=[_StopAt(3)])
    r = subprocess.run([sys.executable, "-m", "tuneline", "train", str(recipe), "-o", str(two), "--resume",
                        "--nproc", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Resuming from step 2" in r.stdout and "FSDP: 2 block units + root" in r.stdout
    a, b = _metrics(one), _metrics(two)
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-3), (x, y)
    assert json.loads((two / "run.json").read_text())["nproc"] == 2
    assert _files(two) == _files(one)  # gathered on rank 0: the layout of an unsharded run
    ma, mb = tuneline.load_run(one).model, tuneline.load_run(two).model
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-3, atol=1e-4)


ROUND_TRIP = textwrap.dedent('''
    import sys
    from pathlib import Path

    import torch
    import torch.distributed as dist
    from torch import nn

    from tuneline.training import sharding
    from tuneline.training.checkpoint import load_checkpoint, save_checkpoint

    class Toy(nn.Module):  # odd sizes: uneven shards over two ranks
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(5, 5) for _ in range(3))
            self.head = nn.Linear(5, 7)

        def forward(self, x):
            for layer in self.layers:
                x = torch.tanh(layer(x))
            return self.head(x)

    def parts(seed, sharded):
        torch.manual_seed(seed)
        model = Toy()
        root = sharding.shard(model, torch.device("cpu"), 2)[0] if sharded else None
        opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
        return model, root, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def step(model, root, opt, x):
        run = root if root is not None else (lambda fn: fn(model))
        run(lambda m: m(x).pow(2).mean()).backward()
        opt.step()
        opt.zero_grad()

    dist.init_process_group("gloo")
    rank, folder = dist.get_rank(), Path(sys.argv[1])
    torch.manual_seed(1)
    x = torch.randn(4, 5)
    model, root, opt, sched = parts(0, True)
    for _ in range(2):
        step(model, root, opt, x[rank * 2:rank * 2 + 2])
    save_checkpoint(folder, model, opt, sched, {"step": 2}, write=rank == 0)
    dist.barrier()
    full = {n: sharding.full(p) for n, p in model.named_parameters()}
    moments = sharding.full_optimizer_state(opt)["state"]
    # a fresh sharded model resumes the exact shards
    model2, root2, opt2, sched2 = parts(5, True)
    load_checkpoint(folder, model2, opt2, sched2)
    for n, p in model2.named_parameters():
        assert torch.equal(sharding.full(p), full[n]), n
    for i, s in sharding.full_optimizer_state(opt2)["state"].items():
        assert all(torch.equal(s[k], moments[i][k]) for k in ("exp_avg", "exp_avg_sq", "step")), i
    step(model2, root2, opt2, x[rank * 2:rank * 2 + 2])
    after = {n: sharding.full(p) for n, p in model2.named_parameters()}
    if rank == 0:
        # the same file in one process, unsharded: same weights, and the next step lands in the same place
        model3, _, opt3, sched3 = parts(9, False)
        load_checkpoint(folder, model3, opt3, sched3)
        for n, p in model3.named_parameters():
            assert torch.equal(p.detach(), full[n]), n
        step(model3, None, opt3, x)
        for n, p in model3.named_parameters():
            torch.testing.assert_close(p.detach(), after[n], rtol=1e-5, atol=1e-6)
        print("OK")
    dist.destroy_process_group()
''')


def test_sharded_checkpoint_round_trip(tmp_path):
    script = tmp_path / "round_trip.py"
    script.write_text(ROUND_TRIP)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(tmp_path / "ckpt")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
