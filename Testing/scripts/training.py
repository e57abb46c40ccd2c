"""The training loop the bundled models' scripts share (train_brainmask.py, train_ct_abdomen.py)."""

from __future__ import annotations

import time

import numpy as np
import torch


def train(net: torch.nn.Module, data: list[dict], aug, loss_fn, seed: int, iterations: int, batch: int,
          max_lr: float, log_every: int) -> torch.nn.Module:
    """AdamW (lr 2e-3, weight decay 1e-4) with a one-cycle schedule peaking at ``max_lr``, for
    ``iterations`` steps of ``batch`` items drawn with replacement (numpy rng seeded by ``seed``) and
    augmented by ``aug`` ({"image", "label"} dicts -> (1, X, Y, Z) arrays); returns ``net`` in eval mode."""
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=iterations)
    rng = np.random.default_rng(seed)
    start = time.time()
    net.train()
    for it in range(iterations):
        items = [aug(data[i]) for i in rng.integers(0, len(data), batch)]
        x = torch.stack([torch.as_tensor(np.asarray(d["image"])) for d in items]).float()
        y = torch.stack([torch.as_tensor(np.asarray(d["label"])) for d in items]).float()
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if it % log_every == 0 or it == iterations - 1:
            print(f"seed {seed} it {it} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
    return net.eval()
