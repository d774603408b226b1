#!/usr/bin/env python3
"""Golden cases for ferroconv's companion ops (ReLU, MaxPool1d/2d/3d, cat/split along channels),
made by PyTorch in float64 in the format of ../shared/fixtures (see tests/companion_fixtures/README.md).

Usage: python scripts/make_companion_fixtures.py OUT_DIR   (needs torch; run it in a venv, commit the JSON, not torch)
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

R = {"f64": 1e-10, "f32": 1e-4, "f16": 2e-3, "bf16": 1.6e-2}
A = {"f64": 1e-11, "f32": 1e-5, "f16": 1e-3, "bf16": 8e-3}
TORCH_DTYPE = {"f64": torch.float64, "f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def tensor(t):
    return {"shape": list(t.shape), "data": [float(v) for v in t.detach().double().flatten().tolist()]}


def rand(shape, dtype, gen, levels=None):
    """Uniform [-1, 1) rounded to the dtype; with `levels`, few distinct values so windows hold ties."""
    x = torch.rand(shape, generator=gen) * 2 - 1
    if levels:
        x = torch.floor(x * levels) / levels
    return x.to(TORCH_DTYPE[dtype]).double()


def tol(dtype, length):
    r = lambda v: float(f"{v:.3g}")
    return {"rtol": r(R[dtype]), "atol": r(A[dtype] * math.sqrt(max(length, 1)))}


def exact():
    return {"rtol": 0.0, "atol": 0.0}


def write(out_dir, case):
    with open(os.path.join(out_dir, case["name"] + ".json"), "w") as f:
        json.dump(case, f, separators=(",", ":"))


def max_pool_fn(dims):
    return {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]


def overlap(k, s, d):
    """Upper bound on how many windows along one dim can pick the same input element."""
    return max(1, math.ceil(((k - 1) * d + 1) / s))


def pool_case(idx, dims, dtype, shape, k, s, p, d, ceil, gen, levels=None):
    x = rand(shape, dtype, gen, levels).requires_grad_(True)
    y = max_pool_fn(dims)(x, k, s, p, d, ceil_mode=ceil)
    dy = rand(list(y.shape), dtype, gen)
    y.backward(dy)
    length = 1
    for kk, ss, dd in zip(k, s, d):
        length *= min(kk, overlap(kk, ss, dd))
    tag = "_ties" if levels else ""
    return {
        "name": f"c{idx:03d}_maxpool{dims}d_{dtype}_i{'x'.join(map(str, shape))}_k{'x'.join(map(str, k))}"
        f"_s{'x'.join(map(str, s))}_p{'x'.join(map(str, p))}_d{'x'.join(map(str, d))}{'_ceil' if ceil else ''}{tag}",
        "op": "max_pool",
        "dims": dims,
        "dtype": dtype,
        "params": {"kernel_size": k, "stride": s, "padding": p, "dilation": d, "ceil_mode": ceil},
        "input": tensor(x),
        "expect_error": False,
        "output": tensor(y),
        "grad_output": tensor(dy),
        "grad_input": tensor(x.grad),
        "tolerance_per_tensor": {"output": exact(), "grad_input": tol(dtype, length)},
    }


def pool_error(idx, dims, shape, k, s, p, d, ceil, kind):
    x = torch.zeros(shape, dtype=torch.float32)
    try:
        max_pool_fn(dims)(x, k, s, p, d, ceil_mode=ceil)
    except (RuntimeError, ValueError) as e:
        message = str(e).splitlines()[0]
    else:
        raise AssertionError(f"PyTorch accepted the error case {kind}")
    return {
        "name": f"c{idx:03d}_err_maxpool{dims}d_{kind}",
        "op": "max_pool",
        "dims": dims,
        "dtype": "f32",
        "params": {"kernel_size": k, "stride": s, "padding": p, "dilation": d, "ceil_mode": ceil},
        "input": tensor(x),
        "expect_error": True,
        "error_kind": kind,
        "message": message,
    }


def relu_case(idx, dtype, shape, gen):
    x = rand(shape, dtype, gen, levels=4).requires_grad_(True)  # exact zeros included
    y = F.relu(x)
    dy = rand(shape, dtype, gen)
    y.backward(dy)
    return {
        "name": f"c{idx:03d}_relu_{dtype}_i{'x'.join(map(str, shape))}",
        "op": "relu",
        "dtype": dtype,
        "params": {},
        "input": tensor(x),
        "expect_error": False,
        "output": tensor(y),
        "grad_output": tensor(dy),
        "grad_input": tensor(x.grad),
        "tolerance_per_tensor": {"output": exact(), "grad_input": exact()},
    }


def cat_case(idx, dtype, shapes, gen):
    xs = [rand(s, dtype, gen).requires_grad_(True) for s in shapes]
    y = torch.cat(xs, dim=1)
    dy = rand(list(y.shape), dtype, gen)
    y.backward(dy)
    return {
        "name": f"c{idx:03d}_cat_{dtype}_" + "_".join("x".join(map(str, s)) for s in shapes),
        "op": "cat",
        "dtype": dtype,
        "params": {"dim": 1},
        "inputs": [tensor(x) for x in xs],
        "expect_error": False,
        "output": tensor(y),
        "grad_output": tensor(dy),
        "grad_inputs": [tensor(x.grad) for x in xs],
        "tolerance_per_tensor": {"output": exact(), "grad_input": exact()},
    }


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(20261127)
    torch.set_num_threads(1)
    cases = []
    n = iter(range(1000))
    pools = [
        # dims, dtype, shape, k, s, p, d, ceil, levels
        (2, "f32", [2, 3, 8, 8], [2, 2], [2, 2], [0, 0], [1, 1], False, None),  # the U-Net's MaxPool2d(2)
        (2, "f64", [1, 2, 7, 9], [3, 3], [2, 2], [1, 1], [1, 1], False, None),
        (2, "f32", [1, 2, 7, 7], [3, 3], [2, 2], [1, 1], [1, 1], True, None),
        (2, "f32", [2, 2, 6, 6], [3, 3], [1, 1], [1, 1], [1, 1], False, 3),  # overlapping windows with ties
        (2, "f32", [1, 3, 9, 10], [3, 2], [2, 3], [1, 0], [2, 1], True, None),
        (2, "f32", [1, 1, 5, 5], [2, 2], [2, 2], [1, 1], [1, 1], True, None),
        (2, "f16", [1, 2, 8, 8], [2, 2], [2, 2], [0, 0], [1, 1], False, None),
        (2, "bf16", [1, 2, 8, 6], [3, 3], [1, 2], [1, 0], [1, 2], False, 2),
        (2, "f32", [0, 2, 4, 4], [2, 2], [2, 2], [0, 0], [1, 1], False, None),  # empty batch
        (1, "f32", [2, 3, 11], [3], [2], [1], [2], True, None),
        (1, "f64", [1, 2, 10], [4], [3], [2], [1], False, 2),
        (3, "f32", [1, 2, 4, 5, 6], [2, 2, 2], [2, 2, 2], [0, 1, 1], [1, 1, 1], True, None),
        (3, "f32", [1, 1, 5, 5, 5], [3, 3, 3], [1, 2, 1], [1, 1, 1], [1, 1, 2], False, 2),
    ]
    for dims, dtype, shape, k, s, p, d, ceil, levels in pools:
        cases.append(pool_case(next(n), dims, dtype, shape, k, s, p, d, ceil, gen, levels))
    errors = [
        (2, [1, 1, 4, 4], [0, 2], [1, 1], [0, 0], [1, 1], False, "non_positive_kernel_size"),
        (2, [1, 1, 4, 4], [2, 2], [0, 1], [0, 0], [1, 1], False, "non_positive_stride"),
        (2, [1, 1, 4, 4], [2, 2], [1, 1], [-1, 0], [1, 1], False, "negative_padding"),
        (2, [1, 1, 4, 4], [2, 2], [1, 1], [0, 0], [0, 1], False, "non_positive_dilation"),
        (2, [1, 1, 4, 4], [3, 3], [1, 1], [2, 0], [1, 1], False, "pool_padding_too_large"),
        (2, [1, 1, 2, 4], [3, 3], [1, 1], [0, 0], [1, 1], False, "pool_output_too_small"),
        (2, [1, 1, 0, 4], [2, 2], [1, 1], [0, 0], [1, 1], False, "empty_spatial_input"),
        (2, [1, 0, 4, 4], [2, 2], [1, 1], [0, 0], [1, 1], False, "empty_channels"),
        (1, [1, 1, 4], [2, 2], [1], [0], [1], False, "param_length_mismatch"),
    ]
    for dims, shape, k, s, p, d, ceil, kind in errors:
        cases.append(pool_error(next(n), dims, shape, k, s, p, d, ceil, kind))
    for dtype, shape in [("f32", [2, 3, 4, 5]), ("bf16", [1, 4, 3, 3]), ("f16", [3, 7]), ("f64", [1, 2, 2, 2, 2])]:
        cases.append(relu_case(next(n), dtype, shape, gen))
    for dtype, shapes in [
        ("f32", [[2, 3, 4, 4], [2, 5, 4, 4]]),
        ("f32", [[1, 1, 6], [1, 2, 6], [1, 3, 6]]),
        ("bf16", [[2, 2, 3, 3], [2, 1, 3, 3]]),
        ("f32", [[0, 2, 3, 3], [0, 4, 3, 3]]),
    ]:
        cases.append(cat_case(next(n), dtype, shapes, gen))
    for case in cases:
        write(out_dir, case)
    print(f"{len(cases)} cases written to {out_dir}")


if __name__ == "__main__":
    main()
