"""What a compiled kernel is made of, read from its SASS without a GPU.

Triton ships NVIDIA's `cuobjdump` beside its `ptxas`; it disassembles a cubin and reports its
resources. `inspect` gives the registers, spill stack, shared memory and the instruction mix of the
main loop (the loop body that issues the most instructions of a given kind), which is where a
flash-attention kernel spends its time: MUFU.EX2 are the softmax's exponentials, HGMMA Hopper's
warpgroup matrix multiplies, LDG/STS.U16 two-byte memory accesses, LDGSTS cp.async copies.
A warp-specialized kernel holds several loops with exponentials (one per consumer partition), and
its retry paths for mbarrier waits branch back from the end of the code, forming spurious loops
around them: `innermost` takes the smallest loop body instead of the one with the most.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import triton

_TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
_INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z0-9_.]+)(.*?);")
_BRANCH_TARGET = re.compile(r"\b0x([0-9a-f]+)\b")
_REGISTER = re.compile(r"\bR(\d+)\b")
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


@dataclass
class Sass:
    registers: int              # per thread
    stack: int                  # bytes of local stack per thread (spills live here)
    spill_instructions: int     # STL/LDL anywhere in the kernel
    shared: int                 # bytes of shared memory per block (Triton's dynamic allocation)
    loop_sequence: list[str]    # the main loop's opcodes in program order
    loop_registers: int         # registers the main loop names (highest R index + 1): a partition's use

    def between(self, prefix: str, first: str, second: str) -> int:
        """`prefix` instructions in the main loop after the first `first` and before the first
        `second` that follows it (0 if either is missing)."""
        ops = self.loop_sequence
        start = next((i for i, op in enumerate(ops) if op.startswith(first)), None)
        if start is None:
            return 0
        end = next((i for i in range(start + 1, len(ops)) if ops[i].startswith(second)), None)
        return 0 if end is None else sum(op.startswith(prefix) for op in ops[start + 1 : end])

    def loop_count(self, prefix: str) -> int:
        """`prefix` instructions in the main loop's body."""
        return sum(op.startswith(prefix) for op in self.loop_sequence)


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


def inspect(kernel: Any, innermost: bool = False) -> Sass:
    """Resources and main-loop instruction mix of a compiled Triton kernel; the main loop is the
    one whose body holds the most MUFU.EX2 (innermost: the smallest body holding any), empty if
    the kernel has no loop."""
    text = _cuobjdump(kernel.asm["cubin"], "-res-usage", "-sass")  # one disassembly gives both
    regs, stack, _, _ = map(int, _RESOURCES.search(text).groups())
    instructions = [(int(m.group(1), 16), m.group(2), m.group(3)) for line in text.splitlines() if (m := _INSTR.match(line))]
    ops = [op for _, op, _ in instructions]
    def count(span: tuple[int, int]) -> int:
        return sum(op.startswith("MUFU.EX2") for op in ops[span[0] : span[1] + 1])

    spans = [span for span in _loops(instructions) if count(span)]
    if innermost:
        best = min(spans, key=lambda span: span[1] - span[0], default=(0, -1))
    else:
        best = max(spans, key=count, default=(0, -1))
    body = instructions[best[0] : best[1] + 1]
    names = [int(r) for _, _, operands in body for r in _REGISTER.findall(operands)]
    spills = sum(1 for op in ops if op.startswith(("STL", "LDL")))
    return Sass(regs, stack, spills, kernel.metadata.shared, [op for _, op, _ in body], max(names, default=-1) + 1)
