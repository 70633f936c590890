"""Read which GPU a code object (cubin or hsaco, both ELF64) was built for, and its function symbols.

Used by the cross-compilation tests and `fdcc inspect`; needs only the standard library.

NVIDIA (e_machine 190, EM_CUDA) has two e_flags layouts, told apart by e_ident[EI_ABIVERSION], as LLVM's
`ELFObjectFileBase::getNVPTXCPUName` does: ABI version 7 (CUDA <= 12) keeps the SM number in bits 0-7;
ABI version 8 (the CUDA 13 ptxas, which triton 3.9 uses for sm_90+) moved it to bits 8-15. The `a` of
`sm_90a` is not reliably recorded in either, so the arch is returned without it.
AMD (e_machine 224, EM_AMDGPU) keeps the processor in EF_AMDGPU_MACH, bits 0-7, an enumeration.
"""

from __future__ import annotations

import struct

EM_CUDA = 190
EM_AMDGPU = 224
_EI_ABIVERSION = 8
_CUDA_ABI_SM_IN_LOW_BYTE = 7
_SHT_SYMTAB = 2
_STT_FUNC = 2

# EF_AMDGPU_MACH_AMDGCN_* values from llvm/include/llvm/BinaryFormat/ELF.h (the ones fdpp may meet).
AMDGPU_MACH: dict[int, str] = {
    0x030: "gfx908", 0x036: "gfx1030", 0x03F: "gfx90a", 0x040: "gfx940", 0x041: "gfx1100",
    0x046: "gfx1101", 0x047: "gfx1102", 0x048: "gfx1200", 0x04B: "gfx941", 0x04C: "gfx942",
    0x04E: "gfx1201", 0x04F: "gfx950",
}


def read_elf_arch(data: bytes) -> tuple[str, str]:
    """(vendor, arch) of a code object: ("cuda", "sm_90") or ("hip", "gfx942"); ValueError if not one."""
    machine, flags = _header(data)[:2]
    if machine == EM_CUDA:
        abi_version = data[_EI_ABIVERSION]
        sm = flags & 0xFF if abi_version <= _CUDA_ABI_SM_IN_LOW_BYTE else (flags >> 8) & 0xFF
        return "cuda", f"sm_{sm}"
    if machine == EM_AMDGPU:
        mach = flags & 0xFF
        if mach not in AMDGPU_MACH:
            raise ValueError(f"AMDGPU code object for unknown processor EF_AMDGPU_MACH={mach:#x}")
        return "hip", AMDGPU_MACH[mach]
    raise ValueError(f"ELF e_machine {machine} is neither EM_CUDA (190) nor EM_AMDGPU (224)")


def function_symbols(data: bytes) -> list[str]:
    """Names of the function symbols (STT_FUNC) in the symbol table: the kernels' entry points."""
    _, _, shoff, shentsize, shnum = _header(data)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type != _SHT_SYMTAB:
            continue
        strtab_offset = sections[link][4]
        for entry in range(offset, offset + size, entsize or 24):
            st_name, st_info = struct.unpack_from("<IB", data, entry)
            if st_info & 0xF == _STT_FUNC:
                end = data.index(b"\0", strtab_offset + st_name)
                names.append(data[strtab_offset + st_name:end].decode())
    return names


def _header(data: bytes) -> tuple[int, int, int, int, int]:
    """(e_machine, e_flags, e_shoff, e_shentsize, e_shnum) of a little-endian ELF64 file."""
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file (bad magic or shorter than an ELF header)")
    if data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file, which every GPU code object is")
    machine, = struct.unpack_from("<H", data, 18)
    shoff, = struct.unpack_from("<Q", data, 40)
    flags, = struct.unpack_from("<I", data, 48)
    shentsize, shnum = struct.unpack_from("<HH", data, 58)
    if shoff + shentsize * shnum > len(data):
        raise ValueError("truncated ELF file: section headers run past its end")
    return machine, flags, shoff, shentsize, shnum
