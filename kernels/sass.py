"""What a compiled kernel is made of, read from its SASS without a GPU.

Triton ships NVIDIA's `cuobjdump` beside its `ptxas`; it disassembles a cubin and reports its
resources. `inspect` gives the registers, spill stack, shared memory and the instruction mix of the
main loop (the loop body that issues the most instructions of a given kind), which is where a
flash-attention kernel spends its time: MUFU.EX2 are the softmax's exponentials, HGMMA Hopper's
warpgroup matrix multiplies, LDG/STS.U16 two-byte memory accesses, LDGSTS cp.async copies.
"""
from __future__ import annotations

import collections
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton

_TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z0-9_.]+)(.*?);")
_BRANCH_TARGET = re.compile(r"\b0x([0-9a-f]+)\b")
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


@dataclass
class Sass:
    registers: int              # per thread
    stack: int                  # bytes of local stack per thread (spills live here)
    spill_instructions: int     # STL/LDL anywhere in the kernel
    shared: int                 # bytes of shared memory per block (Triton's dynamic allocation)
    loop: collections.Counter   # opcode -> count in the main loop's body
    text: str                   # the disassembly

    def loop_count(self, prefix: str) -> int:
        return sum(n for op, n in self.loop.items() if op.startswith(prefix))


def _cuobjdump(cubin: bytes, *flags: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(_TOOLS / "cuobjdump"), *flags, f.name], capture_output=True, text=True, check=True).stdout


def _loops(instructions: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """(first, last) instruction indices of each loop: a branch back to an earlier address."""
    index = {address: i for i, (address, _, _) in enumerate(instructions)}
    loops = []
    for i, (address, op, operands) in enumerate(instructions):
        if op.startswith("BRA") and (target := _BRANCH_TARGET.search(operands)):
            start = int(target.group(1), 16)
            if start < address and start in index:
                loops.append((index[start], i))
    return loops


def inspect(kernel, loop_of: str = "MUFU.EX2") -> Sass:
    """Resources and main-loop instruction mix of a compiled Triton kernel; the main loop is the
    one whose body holds the most `loop_of` instructions (empty if the kernel has no loop)."""
    cubin = kernel.asm["cubin"]
    regs, stack, _, _ = map(int, _RESOURCES.search(_cuobjdump(cubin, "-res-usage")).groups())
    text = _cuobjdump(cubin, "-sass")
    instructions = [(int(m.group(1), 16), m.group(2), m.group(3)) for line in text.splitlines() if (m := _INSTR.match(line))]
    ops = [op for _, op, _ in instructions]
    best = collections.Counter()
    for first, last in _loops(instructions):
        body = collections.Counter(ops[first : last + 1])
        if sum(n for op, n in body.items() if op.startswith(loop_of)) > sum(n for op, n in best.items() if op.startswith(loop_of)):
            best = body
    spills = sum(1 for op in ops if op.startswith(("STL", "LDL")))
    return Sass(regs, stack, spills, kernel.metadata.shared, best, text)
