"""Compile the fused step's Triton kernels for NVIDIA GPUs, on a machine without one, and
report what each compiled kernel uses: registers per thread, bytes spilled to local memory
and shared memory, for the tiles that ``dropdyn.fused.tiles`` chooses; and the machine
instructions its inner loop issues per (neuron, sample) entry of a tile (from ``nvdisasm``:
the loop's SASS length × threads ÷ the tile's entries), a cost that needs no GPU to compare.

    python scripts/fused_compile.py [--arch 80,90] [--dtype float32,float64]
                                    [--activation tanh,...|all] [--dim 11,17,33,128] [--m 1000]

Triton compiles ahead of time for a named target (``GPUTarget("cuda", arch, 32)``) with the
ptxas its Linux wheel ships, so this runs on the CPU; ``cuobjdump`` (shipped beside ptxas)
reads the registers and the spill stack from the cubin. ``--dim`` is the padded input
dimension d + bias (11, 17, 33 and 128 give the four coordinate blocks, 16 to 128). Exits 1
when a kernel fails to compile, spills more than 64 bytes a thread (a tile in local memory;
ptxas parks a few scalars there at times, 8 to 24 bytes, which is reported, not failed), or
needs more than 96 KiB of shared memory (the most a block may use on every GPU from sm_80 on,
consumer Ampere and Ada included). ``tests/test_fused.py`` checks this on a subset.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from itertools import product

os.environ.pop("TRITON_INTERPRET", None)  # compile for real: under the interpreter, @triton.jit is not compilable

SHARED_LIMIT = 96 * 1024
SPILL_LIMIT = 64
SCALARS = {"K": "i32", "M": "i32", "C": "i32", "P": "i32"}
TYPES = {"float32": "fp32", "float64": "fp64"}
SIZES = {"float32": 4, "float64": 8}


def arg_type(name: str, constexpr: bool, dtype: str) -> str:
    """A kernel argument's type in Triton's signature: tensors are pointers to ``dtype``."""
    if constexpr:
        return "constexpr"
    return SCALARS.get(name, f"*{TYPES[dtype]}")


def compile_one(kernel_name: str, arch: int, dtype: str, activation: str, dim: int, m: int) -> dict:
    """Compile one kernel for ``sm_<arch>`` and read its resources from the cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dropdyn import _triton_step
    from dropdyn.fused import tiles

    kernel, t = getattr(_triton_step, kernel_name), tiles(dim, m, SIZES[dtype])
    constants = {"ACT": _triton_step.CODES[activation], "BN": t.BN, "BM": t.BM, "BP": t.BP, "PREC": t.PREC,
                 "PENALTY": True}  # the backward kernel's costlier case
    constants = {k: v for k, v in constants.items() if k in kernel.arg_names}
    signature = {name: arg_type(name, param.is_constexpr, dtype)
                 for name, param in zip(kernel.arg_names, kernel.params, strict=True)}
    row = {"kernel": kernel_name.removesuffix("_kernel"), "arch": arch, "dtype": dtype, "activation": activation,
           "dim": dim, "tiles": f"{t.BN}x{t.BM}x{t.BP}/{t.num_warps}w"}
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants),
                                  target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": t.num_warps, "num_stages": t.num_stages,
                                           "enable_fp_fusion": t.enable_fp_fusion})
    except Exception as error:  # a compile error is this script's finding, reported in its row
        return row | {"error": str(error).strip().splitlines()[-1][:120]}
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([os.path.join(tools, "cuobjdump"), "--dump-resource-usage", cubin.name],
                               capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(tools, "nvdisasm"), "-c", cubin.name], capture_output=True, text=True,
                              check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    per_entry = loop_length(sass) * 32 * t.num_warps / (t.BN * t.BM)
    return row | {"registers": int(found[1]), "spilled": int(found[2]), "shared": compiled.metadata.shared,
                  "per_entry": per_entry}


def loop_length(sass: str) -> int:
    """Instructions of the longest loop in ``nvdisasm -c`` output: from a label to the last
    branch back to it."""
    labels, count, longest = {}, 0, 0
    for line in sass.splitlines():
        if label := re.match(r"\s*(\.L_x_\d+):", line):
            labels[label[1]] = count
        elif re.match(r"\s*/\*[0-9a-f]+\*/\s+\S", line):
            count += 1
            back = re.search(r"BRA\W+(\.L_x_\d+)", line)
            if back and back[1] in labels:
                longest = max(longest, count - labels[back[1]])
    return longest


def verdict(row: dict) -> str:
    if "error" in row:
        return "does not compile: " + row["error"]
    problems = (["spills over 64 B"] * (row["spilled"] > SPILL_LIMIT)
                + ["shared memory over 96 KiB"] * (row["shared"] > SHARED_LIMIT))
    return ", ".join(problems) or "ok"


def main(argv=None) -> int:
    from dropdyn._triton_step import CODES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="80,90", help="compute capabilities ×10, comma-separated")
    parser.add_argument("--dtype", default="float32,float64")
    parser.add_argument("--activation", default="all")
    parser.add_argument("--dim", default="11,17,33,128", help="padded input dimensions d + bias")
    parser.add_argument("--m", type=int, default=1000, help="samples (sets the sample tile)")
    args = parser.parse_args(argv)
    activations = list(CODES) if args.activation == "all" else args.activation.split(",")
    jobs = list(product(["forward_kernel", "backward_kernel"], map(int, args.arch.split(",")), args.dtype.split(","),
                        activations, map(int, args.dim.split(",")), [args.m]))
    with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
        rows = list(pool.map(compile_one, *zip(*jobs, strict=True)))
    print("| kernel | sm | dtype | activation | d + bias | tiles BN×BM×BP/warps | registers | spilled B | "
          "shared KiB | loop instr. per entry | verdict |\n|---|---|---|---|---:|---|---:|---:|---:|---:|---|")
    for row in rows:
        cells = [row["kernel"], row["arch"], row["dtype"], row["activation"], row["dim"], row["tiles"],
                 row.get("registers", "-"), row.get("spilled", "-"),
                 f"{row['shared'] / 1024:.1f}" if "shared" in row else "-",
                 f"{row['per_entry']:.1f}" if "per_entry" in row else "-", verdict(row)]
        print("| " + " | ".join(map(str, cells)) + " |")
    bad = sum(verdict(row) != "ok" for row in rows)
    print(f"{len(rows)} kernels compiled for sm_{args.arch.replace(',', ', sm_')}: "
          + (f"{bad} not ok" if bad else f"all ok (at most {max(row['spilled'] for row in rows)} B spilled a thread, "
                                         f"{max(row['shared'] for row in rows) / 1024:.0f} KiB of shared memory)"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
