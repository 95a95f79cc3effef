"""A straightforward PyTorch eager implementation of the fomoe MoE decoder, timed on the same
libtorch, as the baseline `fomoe bench-step` is compared against.

Same model as harness/src/model (tied embedding, learned positions, pre-RMSNorm causal
attention via scaled_dot_product_attention, pre-RMSNorm MoE FFN with softmax top-k gates,
experts Linear->GELU->Linear without bias, Switch balance loss), trained with AdamW and
gradient clipping. Dispatch is the textbook one: router, top-k, then a Python loop over
experts with index_select / index_add.

Needs the full torch wheel:  FOMOE_TORCH_FLAVOR=full scripts/setup
Run:  ~/.cache/fomoe/torch-2.13.0-full/bin/python bench/eager_reference.py --preset proxy-s --threads 2 --json
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # vocab, d, layers, heads, experts, k, d_expert, seq, batch
    "tiny": (256, 64, 2, 2, 8, 2, 64, 64, 8),
    "small": (256, 128, 2, 4, 8, 2, 128, 128, 8),
    "proxy-s": (256, 256, 4, 4, 16, 2, 256, 256, 16),
    "proxy-m": (256, 512, 8, 8, 32, 2, 512, 512, 16),
}


class MoE(nn.Module):
    def __init__(self, d, e, k, de):
        super().__init__()
        self.e, self.k = e, k
        self.router = nn.Linear(d, e, bias=False)
        self.fc1 = nn.ModuleList([nn.Linear(d, de, bias=False) for _ in range(e)])
        self.fc2 = nn.ModuleList([nn.Linear(de, d, bias=False) for _ in range(e)])

    def forward(self, x):
        logits = self.router(x)
        probs = logits.softmax(-1)
        topv, topi = probs.topk(self.k, dim=-1)
        gates = topv / topv.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(self.e):
            tok, slot = (topi == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            h = self.fc2[e](F.gelu(self.fc1[e](x.index_select(0, tok))))
            out = out.index_add(0, tok, h * gates[tok, slot].unsqueeze(1))
        counts = torch.bincount(topi.reshape(-1), minlength=self.e).float()
        f = counts / (x.shape[0] * self.k)
        balance = self.e * (f * probs.mean(0)).sum()
        return out, balance


class Block(nn.Module):
    def __init__(self, d, h, e, k, de):
        super().__init__()
        self.h = h
        self.ln1 = nn.RMSNorm(d, eps=1e-5)
        self.ln2 = nn.RMSNorm(d, eps=1e-5)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.moe = MoE(d, e, k, de)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, d))
        y, bal = self.moe(self.ln2(x).view(b * s, d))
        return x + y.view(b, s, d), bal


class Model(nn.Module):
    def __init__(self, v, d, l, h, e, k, de, s):
        super().__init__()
        self.wte = nn.Embedding(v, d)
        self.wpe = nn.Embedding(s, d)
        self.blocks = nn.ModuleList([Block(d, h, e, k, de) for _ in range(l)])
        self.ln_f = nn.RMSNorm(d, eps=1e-5)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe.weight[: idx.shape[1]]
        bals = []
        for blk in self.blocks:
            x, bal = blk(x)
            bals.append(bal)
        logits = self.ln_f(x) @ self.wte.weight.t()
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        return ce + 0.01 * torch.stack(bals).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="proxy-s", choices=PRESETS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    v, d, l, h, e, k, de, s, b = PRESETS[a.preset]
    model = Model(v, d, l, h, e, k, de, s)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x = torch.randint(0, v, (b, s))
    y = torch.randint(0, v, (b, s))
    times, cpu = [], []
    for i in range(a.steps + 2):
        t = time.perf_counter()
        c = time.process_time()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    med = statistics.median(times)
    active = l * (4 * d * d + d * e + k * 2 * d * de) + v * d
    fpt = 6 * active + 12 * l * d * s
    tps = b * s / med
    out = {"impl": "pytorch-eager", "preset": a.preset, "threads": a.threads, "step_ms_median": med * 1e3,
           "step_ms_min": min(times) * 1e3, "tokens_per_step": b * s,
           "tokens_per_s": tps, "gflops": tps * fpt / 1e9, "torch": torch.__version__,
           "cpu_s_per_step_median": statistics.median(cpu)}
    print(json.dumps(out) if a.json else "\n".join(f"{k_}: {v_}" for k_, v_ in out.items()))


if __name__ == "__main__":
    main()
