# pKVM's guest ABI over veil's port-I/O hypercall, in 64-bit mode, on memory that is all
# private at launch: ask the granule, share a page, write it, let the host read it and
# answer, unshare it, let the host find it refused, read back what both wrote, then make
# four calls pKVM refuses.
#
# A call loads the SMCCC function id into rax and x1..x3 into rbx, rcx, rdx, and
# executes `out 0x5e, al`; the result comes back in rax (0 = SMCCC_RET_SUCCESS,
# -1 = NOT_SUPPORTED, -3 = INVALID_PARAMETER).
#
# Entered by veil-loader's flat boot source (rbx = its start info, unused here).
# Port 0x10: 32-bit reports. Port 0x12: checkpoint, the buffer is shared: the host reads
# the guest's word at BUF and writes its own at BUF + 8. Port 0x13: checkpoint, the
# buffer is private: the host checks it cannot touch it.

.intel_syntax noprefix
.code64

.set BUF, 0x300000
.set MEMINFO, 0xc6000002
.set SHARE, 0xc6000003
.set UNSHARE, 0xc6000004

# One call; reports the low half of the result.
.macro SMCCC func, x1, x2, x3
    mov eax, \func
    mov rbx, \x1
    mov rcx, \x2
    mov rdx, \x3
    out 0x5e, al
    out 0x10, eax
.endm

.text
.global _start
_start:
    SMCCC MEMINFO, 0, 0, 0              # the granule: 4096
    SMCCC SHARE, BUF, 0, 0              # 0
    mov rdi, BUF
    mov dword ptr [rdi], 0x6e657473     # the guest's word, while shared
    out 0x12, al
    mov eax, [rdi + 8]                  # the host's answer
    out 0x10, eax
    SMCCC UNSHARE, BUF, 0, 0            # 0
    out 0x13, al
    mov eax, [rdi]                      # both words survived the unshare
    out 0x10, eax
    mov eax, [rdi + 8]
    out 0x10, eax
    SMCCC SHARE, BUF + 0x800, 0, 0      # not granule-aligned: -3
    SMCCC SHARE, BUF, 1, 0              # x2 not zero: -3
    SMCCC SHARE, 0x40000000, 0, 0       # not guest memory: -3
    SMCCC 0xc6000009, BUF, 0, 0         # no such function: -1
    hlt
